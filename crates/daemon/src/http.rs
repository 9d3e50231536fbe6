//! The REST API over HTTP/1.1 on a Unix socket: authorization by the peer's credentials
//! (root or the socket's group; anyone else gets 403), routing, JSON bodies, ETags,
//! operations, the event stream, metrics, and the upgraded exec and console streams.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use api::{
    Action, ErrorBody, InstancePatch, InstancePut, InstanceRename, InstanceState, InstancesPost,
    StatePut, Status,
};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::instances::{lock, Daemon};
use crate::ApiError;

pub type Body = BoxBody<Bytes, std::io::Error>;
type Resp = Response<Body>;

/// Who may use the API: root, or members of this group.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub gid: Option<u32>,
}

pub async fn serve(d: Arc<Daemon>, listener: tokio::net::UnixListener, access: Access) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let allowed = stream
            .peer_cred()
            .map(|c| permitted(c.uid(), c.gid(), c.pid(), access))
            .unwrap_or(false);
        let d = d.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let d = d.clone();
                async move {
                    // Each request runs to its end in a task of its own: a client that
                    // hangs up must not cancel a change halfway (say, a limit applied to
                    // the zone but not yet saved).
                    let r = tokio::spawn(route(d, req, allowed)).await;
                    Ok::<_, Infallible>(r.unwrap_or_else(|e| {
                        error(ApiError::internal(format!("request handler failed: {e}")))
                    }))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn permitted(uid: u32, gid: u32, pid: Option<i32>, access: Access) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(g) = access.gid else { return false };
    if gid == g {
        return true;
    }
    // Supplementary groups of the peer process.
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|l| l.split_whitespace().any(|x| x.parse::<u32>() == Ok(g)))
        })
        .unwrap_or(false)
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn error(e: ApiError) -> Resp {
    json(
        e.status,
        &ErrorBody {
            error: e.message,
            code: e.status.as_u16(),
        },
    )
}

fn stream_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    StreamBody::new(s).boxed()
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad(format!("reading the request body: {e}")))?
        .to_bytes();
    if bytes.len() > 4 << 20 {
        return Err(ApiError::bad("request body larger than 4 MiB"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), "1".to_string()),
        })
        .collect()
}

fn truthy(q: &BTreeMap<String, String>, k: &str) -> bool {
    q.get(k)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

async fn route(d: Arc<Daemon>, req: Request<Incoming>, allowed: bool) -> Resp {
    if !allowed {
        return error(ApiError::new(
            StatusCode::FORBIDDEN,
            "not allowed: the API is open to root and to members of the socket's group",
        ));
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let m = req.method().clone();
    let r = match (m.clone(), segs.as_slice()) {
        (Method::GET, ["1.0"]) => Ok(server_info(&d)),
        (Method::GET, ["1.0", "openapi.json"]) => Ok(json(
            StatusCode::OK,
            &api::openapi::document(env!("CARGO_PKG_VERSION")),
        )),
        (Method::GET, ["1.0", "instances"]) => Ok(list(&d, &req)),
        (Method::POST, ["1.0", "instances"]) => create(&d, req).await,
        (_, ["1.0", "instances", name, rest @ ..]) => {
            let name = name.to_string();
            instance_route(
                d,
                m,
                name,
                rest.iter().map(|s| s.to_string()).collect(),
                req,
            )
            .await
        }
        (Method::GET, ["1.0", "operations"]) => Ok(json(StatusCode::OK, &d.ops.list())),
        (Method::GET, ["1.0", "operations", id]) => d
            .ops
            .get(id)
            .map(|o| json(StatusCode::OK, &o))
            .ok_or_else(|| ApiError::not_found(format!("operation {id} not found"))),
        (Method::GET, ["1.0", "operations", id, "wait"]) => {
            let t = query(&req)
                .get("timeout")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|t| *t >= 0.0)
                .map(Duration::from_secs_f64);
            d.ops
                .wait(id, t)
                .await
                .map(|o| json(StatusCode::OK, &o))
                .ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))
        }
        (Method::DELETE, ["1.0", "operations", id]) => match d.ops.cancel(id) {
            None => Err(ApiError::not_found(format!("operation {id} not found"))),
            Some(false) => Err(ApiError::bad(format!(
                "operation {id} has ended or cannot be cancelled"
            ))),
            Some(true) => Ok(json(StatusCode::OK, &serde_json::json!({}))),
        },
        (Method::GET, ["1.0", "events"]) => Ok(events(&d, &req)),
        (Method::GET, ["1.0", "metrics"]) => Ok(crate::metrics::render(&d).await),
        (_, ["1.0", ..]) => Err(ApiError::not_found(format!("no route {m} {path}"))),
        _ => Err(ApiError::not_found(format!(
            "no route {m} {path} (the API lives under /1.0)"
        ))),
    };
    r.unwrap_or_else(error)
}

fn server_info(d: &Daemon) -> Resp {
    let cgroup = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        "hybrid"
    } else {
        "v1"
    };
    let n = lock(&d.store).list().map(|v| v.len()).unwrap_or(0);
    json(
        StatusCode::OK,
        &api::ServerInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: "1.0".into(),
            cgroup: cgroup.into(),
            kvm: std::path::Path::new("/dev/kvm").exists(),
            instances: n,
        },
    )
}

fn list(d: &Daemon, req: &Request<Incoming>) -> Resp {
    let rows = match lock(&d.store).list() {
        Ok(r) => r,
        Err(e) => return error(ApiError::internal(e)),
    };
    if truthy(&query(req), "recursion") {
        let v: Vec<api::Instance> = rows.iter().map(|r| d.view(r)).collect();
        json(StatusCode::OK, &v)
    } else {
        let v: Vec<String> = rows
            .iter()
            .map(|r| format!("/1.0/instances/{}", r.name))
            .collect();
        json(StatusCode::OK, &v)
    }
}

async fn create(d: &Arc<Daemon>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let post: InstancesPost = body_json(req).await?;
    let row = d.create(&post)?;
    let name = row.name.clone();
    let dd = d.clone();
    let start = post.start;
    let op = d.ops.spawn(
        format!(
            "{} instance {name}",
            if start {
                "Creating and starting"
            } else {
                "Creating"
            }
        ),
        vec![format!("/1.0/instances/{name}")],
        false,
        move |_| async move {
            if start {
                dd.start(&name).await.map_err(|e| e.message)
            } else {
                Ok(())
            }
        },
    );
    Ok(json(StatusCode::ACCEPTED, &op))
}

fn etag_of(gen: i64) -> String {
    format!("\"{gen}\"")
}

fn if_match(req: &Request<Incoming>) -> Result<Option<i64>, ApiError> {
    match req.headers().get("if-match") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad("If-Match: expected an ETag this daemon sent")),
    }
}

async fn instance_route(
    d: Arc<Daemon>,
    m: Method,
    name: String,
    rest: Vec<String>,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let rest: Vec<&str> = rest.iter().map(|s| s.as_str()).collect();
    match (m, rest.as_slice()) {
        (Method::GET, []) => {
            let row = d.row(&name)?;
            let mut r = json(StatusCode::OK, &d.view(&row));
            if let Ok(v) = etag_of(row.generation).parse() {
                r.headers_mut().insert("etag", v);
            }
            Ok(r)
        }
        (Method::PUT, []) => {
            let im = if_match(&req)?;
            let put: InstancePut = body_json(req).await?;
            let row = d.set_config(&name, put.config, put.description, im).await?;
            Ok(with_etag(
                json(StatusCode::OK, &d.view(&row)),
                row.generation,
            ))
        }
        (Method::PATCH, []) => {
            let im = if_match(&req)?;
            let patch: InstancePatch = body_json(req).await?;
            let row = d.row(&name)?;
            let mut cfg = row.config.clone();
            for (k, v) in patch.config {
                match v {
                    Some(v) => cfg.insert(k, v),
                    None => cfg.remove(&k),
                };
            }
            let desc = patch.description.unwrap_or(row.description);
            let row = d
                .set_config(&name, cfg, desc, im.or(Some(row.generation)))
                .await?;
            Ok(with_etag(
                json(StatusCode::OK, &d.view(&row)),
                row.generation,
            ))
        }
        (Method::POST, []) => {
            let r: InstanceRename = body_json(req).await?;
            let row = d.rename(&name, &r.name).await?;
            Ok(json(StatusCode::OK, &d.view(&row)))
        }
        (Method::DELETE, []) => {
            d.row(&name)?;
            let force = truthy(&query(&req), "force");
            if !force && d.is_running(&name) {
                return Err(ApiError::conflict(format!(
                    "instance {name:?} is running; stop it first or delete with --force"
                )));
            }
            let dd = d.clone();
            let n = name.clone();
            let op = d.ops.spawn(
                format!("Deleting instance {name}"),
                vec![format!("/1.0/instances/{name}")],
                false,
                move |_| async move { dd.delete(&n, force).await.map_err(|e| e.message) },
            );
            Ok(json(StatusCode::ACCEPTED, &op))
        }
        (Method::GET, ["state"]) => state(&d, &name).await,
        (Method::PUT, ["state"]) => {
            let sp: StatePut = body_json(req).await?;
            d.row(&name)?;
            // Refuse what cannot work now, before an operation is made.
            let running = d.is_running(&name);
            match sp.action {
                Action::Start if running => {
                    return Err(ApiError::conflict(format!(
                        "instance {name:?} is already running"
                    )))
                }
                Action::Stop | Action::Freeze | Action::Unfreeze if !running => {
                    return Err(ApiError::conflict(format!(
                        "instance {name:?} is not running"
                    )))
                }
                _ => {}
            }
            let dd = d.clone();
            let n = name.clone();
            let op = d.ops.spawn(
                format!("{} instance {name}", capitalize(&sp.action.to_string())),
                vec![format!("/1.0/instances/{name}")],
                matches!(sp.action, Action::Stop | Action::Restart) && !sp.force,
                move |cancel| async move {
                    if cancel.is_cancelled() {
                        return Err("cancelled".into());
                    }
                    let r = match sp.action {
                        Action::Start => dd.start(&n).await,
                        Action::Stop => dd.stop(&n, sp.timeout, sp.force).await,
                        Action::Restart => dd.restart(&n, sp.timeout, sp.force).await,
                        Action::Freeze => dd.freeze(&n, true).await,
                        Action::Unfreeze => dd.freeze(&n, false).await,
                    };
                    r.map_err(|e| e.message)
                },
            );
            Ok(json(StatusCode::ACCEPTED, &op))
        }
        (Method::POST, ["exec"]) => crate::streams::exec(d, &name, req).await,
        (Method::GET, ["console"]) => crate::streams::console(d, &name, req).await,
        (Method::GET, ["logs"]) => {
            let q = query(&req);
            crate::streams::logs(d, &name, truthy(&q, "follow"), q.get("since").cloned()).await
        }
        (Method::GET, ["snapshots"]) => {
            let row = d.row(&name)?;
            let v = lock(&d.store)
                .snapshots(row.id)
                .map_err(ApiError::internal)?;
            Ok(json(StatusCode::OK, &v))
        }
        (Method::POST, ["snapshots"]) => {
            let s: api::SnapshotPost = body_json(req).await?;
            crate::snapshots::create(d, &name, &s.name).await
        }
        (Method::POST, ["snapshots", snap, "restore"]) => {
            crate::snapshots::restore(d, &name, snap).await
        }
        (Method::DELETE, ["snapshots", snap]) => crate::snapshots::delete(d, &name, snap).await,
        (m, _) => Err(ApiError::not_found(format!(
            "no route {m} /1.0/instances/{name}/{}",
            rest.join("/")
        ))),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn with_etag(mut r: Resp, gen: i64) -> Resp {
    if let Ok(v) = etag_of(gen).parse() {
        r.headers_mut().insert("etag", v);
    }
    r
}

async fn state(d: &Arc<Daemon>, name: &str) -> Result<Resp, ApiError> {
    let row = d.row(name)?;
    let (status, pid) = d.status_of(name);
    let rootfs = match &row.source {
        api::Source::Rootfs { path } => Some(std::path::PathBuf::from(path)),
        _ => None,
    };
    let mut st = InstanceState {
        status: Some(status),
        pid,
        last_exit: row.last_exit,
        unenforced: if row.kind == api::InstanceKind::Zone {
            crate::spec::unenforced(&row.config, rootfs.as_deref())
        } else {
            BTreeMap::new()
        },
        ..Default::default()
    };
    if matches!(status, Status::Running | Status::Frozen | Status::Stopping) {
        if let Ok(monitor::Response::Usage(u)) = d.call(row.id, monitor::Request::Usage).await {
            st.cpu_usage_ns = u.cpu_ns;
            st.memory_bytes = u.memory_bytes;
            st.memory_limit_bytes = u.memory_limit;
            st.processes = u.pids;
            st.processes_limit = u.pids_limit;
            st.disk_read_bytes = u.read_bytes;
            st.disk_write_bytes = u.write_bytes;
            st.net_rx_bytes = u.net_rx_bytes;
            st.net_tx_bytes = u.net_tx_bytes;
        }
    }
    Ok(json(StatusCode::OK, &st))
}

fn events(d: &Arc<Daemon>, req: &Request<Incoming>) -> Resp {
    let filter = query(req).get("type").cloned();
    let mut rx = d.ops.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        // A first empty line tells the client the stream is live.
        if tx.send(Bytes::from_static(b"\n")).await.is_err() {
            return;
        }
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if filter
                        .as_deref()
                        .is_some_and(|f| !f.split(',').any(|x| x == ev.kind))
                    {
                        continue;
                    }
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(stream_body(body_rx))
        .unwrap_or_else(|_| Response::new(full("")))
}

pub fn switching(proto: &str) -> Resp {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", proto)
        .body(full(""))
        .unwrap_or_else(|_| Response::new(full("")))
}

pub fn text(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

pub fn streaming(ctype: &str, rx: tokio::sync::mpsc::Receiver<Bytes>) -> Resp {
    Response::builder()
        .header("content-type", ctype)
        .body(stream_body(rx))
        .unwrap_or_else(|_| Response::new(full("")))
}
