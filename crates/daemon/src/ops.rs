//! Operations (long work that a client can wait for or cancel) and the event stream.
//! Operations live in memory: they describe work in flight, and a daemon restart ends
//! them (the instances they acted on are re-adopted from their monitors).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{Event, Operation, OperationStatus};
use tokio::sync::{broadcast, watch};

/// How many finished operations are kept for `GET /1.0/operations`.
const KEEP_FINISHED: usize = 200;

struct Entry {
    op: Operation,
    done: watch::Sender<bool>,
    cancel: watch::Sender<bool>,
}

#[derive(Clone)]
pub struct Ops {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    order: Arc<Mutex<Vec<String>>>,
    events: broadcast::Sender<Event>,
}

/// Handed to an operation's task: whether it has been cancelled.
#[derive(Clone)]
pub struct CancelToken(watch::Receiver<bool>);

impl CancelToken {
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }
}

pub fn now_rfc3339() -> String {
    zone::state::now_rfc3339()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ops {
    pub fn new() -> Ops {
        let (events, _) = broadcast::channel(1024);
        Ops {
            inner: Arc::new(Mutex::new(HashMap::new())),
            order: Arc::new(Mutex::new(Vec::new())),
            events,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn emit(&self, kind: &str, action: &str, source: &str, detail: BTreeMap<String, String>) {
        let _ = self.events.send(Event {
            kind: kind.into(),
            timestamp: now_rfc3339(),
            action: action.into(),
            source: source.into(),
            detail,
        });
    }

    pub fn lifecycle(&self, action: &str, instance: &str) {
        self.emit("lifecycle", action, instance, BTreeMap::new());
    }

    /// Starts `work` as an operation and returns it (status running).
    pub fn spawn<F, Fut>(
        &self,
        description: String,
        resources: Vec<String>,
        may_cancel: bool,
        work: F,
    ) -> Operation
    where
        F: FnOnce(CancelToken) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let id = new_id();
        let now = now_rfc3339();
        let op = Operation {
            id: id.clone(),
            description,
            status: OperationStatus::Running,
            resources,
            created_at: now.clone(),
            updated_at: now,
            err: None,
            may_cancel,
        };
        let (done, _) = watch::channel(false);
        let (cancel, cancel_rx) = watch::channel(false);
        lock(&self.inner).insert(
            id.clone(),
            Entry {
                op: op.clone(),
                done,
                cancel,
            },
        );
        lock(&self.order).push(id.clone());
        self.emit_op(&op);
        let fut = work(CancelToken(cancel_rx.clone()));
        let me = self.clone();
        tokio::spawn(async move {
            let r = fut.await;
            let cancelled = *cancel_rx.borrow();
            me.finish(&id, r, cancelled);
        });
        op
    }

    fn emit_op(&self, op: &Operation) {
        let mut d = BTreeMap::new();
        d.insert("description".into(), op.description.clone());
        if let Some(e) = &op.err {
            d.insert("err".into(), e.clone());
        }
        self.emit("operation", &op.status.to_string(), &op.id, d);
    }

    fn finish(&self, id: &str, r: Result<(), String>, cancelled: bool) {
        let op = {
            let mut m = lock(&self.inner);
            let Some(e) = m.get_mut(id) else { return };
            e.op.status = match (&r, cancelled) {
                (Ok(()), _) => OperationStatus::Success,
                (Err(_), true) => OperationStatus::Cancelled,
                (Err(_), false) => OperationStatus::Failure,
            };
            e.op.err = r.err();
            e.op.updated_at = now_rfc3339();
            e.done.send_replace(true);
            e.op.clone()
        };
        self.emit_op(&op);
        // Forget the oldest finished operations.
        let mut order = lock(&self.order);
        if order.len() > KEEP_FINISHED {
            let mut m = lock(&self.inner);
            let mut excess = order.len() - KEEP_FINISHED;
            order.retain(|oid| {
                if excess > 0
                    && m.get(oid)
                        .is_some_and(|e| e.op.status != OperationStatus::Running)
                {
                    m.remove(oid);
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        lock(&self.inner).get(id).map(|e| e.op.clone())
    }

    pub fn list(&self) -> Vec<Operation> {
        let m = lock(&self.inner);
        lock(&self.order)
            .iter()
            .filter_map(|id| m.get(id).map(|e| e.op.clone()))
            .collect()
    }

    /// Waits until the operation ends or `timeout` passes; its state then.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Option<Operation> {
        let mut rx = lock(&self.inner).get(id)?.done.subscribe();
        let waiting = async {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, waiting).await;
            }
            None => waiting.await,
        }
        self.get(id)
    }

    /// Asks a running operation to stop; false when it cannot be cancelled.
    pub fn cancel(&self, id: &str) -> Option<bool> {
        let m = lock(&self.inner);
        let e = m.get(id)?;
        if !e.op.may_cancel || e.op.status != OperationStatus::Running {
            return Some(false);
        }
        e.cancel.send_replace(true);
        Some(true)
    }
}

fn new_id() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
