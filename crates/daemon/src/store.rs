//! The daemon's state in SQLite (`bulkhead.db` under the state root): schema migrations
//! keyed by `PRAGMA user_version`, WAL journal, every change in one transaction, so a
//! crash or `kill -9` at any point leaves either the old or the new row, never half.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use api::{InstanceKind, Source};
use rusqlite::{params, Connection, OptionalExtension};

/// One instance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub name: String,
    pub kind: InstanceKind,
    pub source: Source,
    pub config: BTreeMap<String, String>,
    pub description: String,
    pub created_at: String,
    /// Bumped by every change of config or description: the ETag.
    pub generation: i64,
    pub last_exit: Option<i32>,
    /// Whether the operator wants it running (restart policy and re-adoption use it).
    pub want_running: bool,
}

const MIGRATIONS: &[&str] = &[
    // 1: instances.
    "CREATE TABLE instances (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        config TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        generation INTEGER NOT NULL DEFAULT 1,
        last_exit INTEGER,
        want_running INTEGER NOT NULL DEFAULT 0
    );",
    // 2: snapshots.
    "CREATE TABLE snapshots (
        instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        stateful INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (instance_id, name)
    );",
];

pub struct Store {
    conn: Connection,
}

fn kind_str(k: InstanceKind) -> &'static str {
    match k {
        InstanceKind::Zone => "zone",
        InstanceKind::Vm => "vm",
    }
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    let kind: String = r.get(2)?;
    let source: String = r.get(3)?;
    let config: String = r.get(4)?;
    let bad = |i, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(Row {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: if kind == "vm" {
            InstanceKind::Vm
        } else {
            InstanceKind::Zone
        },
        source: serde_json::from_str(&source).map_err(|e| bad(3, e))?,
        config: serde_json::from_str(&config).map_err(|e| bad(4, e))?,
        description: r.get(5)?,
        created_at: r.get(6)?,
        generation: r.get(7)?,
        last_exit: r.get(8)?,
        want_running: r.get::<_, i64>(9)? != 0,
    })
}

const COLUMNS: &str =
    "id, name, kind, source, config, description, created_at, generation, last_exit, want_running";

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut s = Store { conn };
        s.migrate()
            .with_context(|| format!("migrate {}", path.display()))?;
        Ok(s)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            anyhow::bail!(
                "the database has schema version {version}, newer than this bulkheadd knows ({}); run a newer bulkheadd",
                MIGRATIONS.len()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<Row>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM instances ORDER BY name"))?;
        let rows = st
            .query_map([], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn get(&self, name: &str) -> Result<Option<Row>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM instances WHERE name = ?1"))?;
        Ok(st.query_row([name], row).optional()?)
    }

    pub fn insert(
        &mut self,
        name: &str,
        kind: InstanceKind,
        source: &Source,
        config: &BTreeMap<String, String>,
        description: &str,
        created_at: &str,
    ) -> Result<Row> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO instances (name, kind, source, config, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                kind_str(kind),
                serde_json::to_string(source)?,
                serde_json::to_string(config)?,
                description,
                created_at
            ],
        )?;
        tx.commit()?;
        self.get(name)?
            .context("the instance vanished right after insertion")
    }

    /// Replaces config and description if the generation is still `expect` (None: any).
    /// Returns false when the generation moved on (a concurrent change).
    pub fn update_config(
        &mut self,
        name: &str,
        config: &BTreeMap<String, String>,
        description: &str,
        expect: Option<i64>,
    ) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE instances SET config = ?1, description = ?2, generation = generation + 1
             WHERE name = ?3 AND (?4 IS NULL OR generation = ?4)",
            params![serde_json::to_string(config)?, description, name, expect],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    pub fn rename(&mut self, old: &str, new: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE instances SET name = ?1, generation = generation + 1 WHERE name = ?2",
            params![new, old],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_want_running(&mut self, name: &str, want: bool) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET want_running = ?1 WHERE name = ?2",
            params![want as i64, name],
        )?;
        Ok(())
    }

    pub fn set_last_exit(&mut self, name: &str, code: Option<i32>) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET last_exit = ?1 WHERE name = ?2",
            params![code, name],
        )?;
        Ok(())
    }

    pub fn delete(&mut self, name: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM instances WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    pub fn snapshots(&self, instance_id: i64) -> Result<Vec<api::Snapshot>> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, created_at, stateful FROM snapshots WHERE instance_id = ?1 ORDER BY created_at, name",
        )?;
        let v = st
            .query_map([instance_id], |r| {
                Ok(api::Snapshot {
                    name: r.get(0)?,
                    created_at: r.get(1)?,
                    stateful: r.get::<_, i64>(2)? != 0,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(v)
    }

    pub fn add_snapshot(&mut self, instance_id: i64, s: &api::Snapshot) -> Result<()> {
        self.conn.execute(
            "INSERT INTO snapshots (instance_id, name, created_at, stateful) VALUES (?1, ?2, ?3, ?4)",
            params![instance_id, s.name, s.created_at, s.stateful as i64],
        )?;
        Ok(())
    }

    pub fn delete_snapshot(&mut self, instance_id: i64, name: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM snapshots WHERE instance_id = ?1 AND name = ?2",
            params![instance_id, name],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_crud_and_generation_check() {
        let dir = std::env::temp_dir().join(format!("bh-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("t.db");
        let mut s = Store::open(&db).unwrap();
        let mut cfg = BTreeMap::new();
        cfg.insert("limits.memory".to_string(), "64MiB".to_string());
        let src = Source::Rootfs { path: "/r".into() };
        let r = s
            .insert(
                "web",
                InstanceKind::Zone,
                &src,
                &cfg,
                "",
                "2026-01-01T00:00:00Z",
            )
            .unwrap();
        assert_eq!(r.generation, 1);
        assert!(s
            .insert("web", InstanceKind::Zone, &src, &cfg, "", "x")
            .is_err());
        assert!(s.update_config("web", &cfg, "d", Some(1)).unwrap());
        assert!(!s.update_config("web", &cfg, "d", Some(1)).unwrap());
        s.add_snapshot(
            r.id,
            &api::Snapshot {
                name: "s1".into(),
                created_at: "t".into(),
                stateful: false,
            },
        )
        .unwrap();
        drop(s);
        // Reopening runs no migration twice and keeps the rows.
        let mut s = Store::open(&db).unwrap();
        let r = s.get("web").unwrap().unwrap();
        assert_eq!((r.generation, r.description.as_str()), (2, "d"));
        assert_eq!(s.snapshots(r.id).unwrap().len(), 1);
        s.rename("web", "www").unwrap();
        assert!(s.get("web").unwrap().is_none());
        s.delete("www").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(
            s.snapshots(r.id).unwrap().is_empty(),
            "snapshots go with their instance"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
