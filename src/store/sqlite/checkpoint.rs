//! WAL checkpoints on a thread of their own, so the writer's commits never pay for one
//! (SQLite's automatic checkpoint runs inside a commit).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::store::StoreError;

/// Copies the WAL back into the database from a thread of its own, so the writer's
/// commits never pay for a checkpoint (SQLite's automatic one runs inside a commit).
pub struct Checkpointer {
    stop: crossbeam_channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpointer runs, and the WAL length (in frames of one page) past which
/// it holds the writer back for a moment to finish the checkpoint, so the WAL restarts
/// from its beginning instead of growing through a long storm.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const WAL_RESTART_FRAMES: i64 = 32_768;

impl Checkpointer {
    pub fn start(path: &Path, writer: Arc<Mutex<Connection>>) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(err) = checkpoint(&conn, &writer) {
                        tracing::warn!(error = %err, "sqlite checkpoint failed");
                    }
                }
            })
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

/// Passive checkpoints, which never block the writer. When the WAL is long, they repeat
/// until a pass finds little new to copy, and a last one runs with the writer held: it
/// completes, so the next commit starts the WAL over. The writer waits only for the copy
/// of what was committed during the previous pass.
fn checkpoint(conn: &Connection, writer: &Mutex<Connection>) -> Result<(), StoreError> {
    const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";
    const CATCH_UP_PASSES: usize = 8;
    const HELD_FRAMES: i64 = 512;
    let passive = || -> Result<(i64, i64), StoreError> {
        Ok(conn.query_row(PASSIVE, [], |r| Ok((r.get(1)?, r.get(2)?)))?)
    };
    let (wal_frames, mut copied) = passive()?;
    if wal_frames <= WAL_RESTART_FRAMES {
        return Ok(());
    }
    for _ in 0..CATCH_UP_PASSES {
        let (_, now_copied) = passive()?;
        let pass = now_copied - copied;
        copied = now_copied;
        if pass <= HELD_FRAMES {
            break;
        }
    }
    let _held = writer.lock().map_err(|_| StoreError::Poisoned)?;
    let started = std::time::Instant::now();
    passive()?;
    tracing::debug!(wal_frames, held = ?started.elapsed(), "WAL checkpointed to its end");
    Ok(())
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
