//! The run directory's lock: an advisory `flock` on `out_dir/.lock`, held for as long as a
//! process trains (or resumes, or runs DeMix) in that directory. The kernel releases it when
//! the holder exits, however it exits, so a lock left by a killed run never blocks a resume.
//! The file holds the holder's pid so that a refused second process can name it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::error::{Error, IoContext, Result};

pub(crate) const LOCK_FILE: &str = ".lock";

/// Held while alive; clones share one lock. Dropping the last one releases it.
#[derive(Clone)]
pub struct RunLock {
    _file: Arc<File>,
}

/// Locks this process already holds, by directory: a second acquire in the same process (a
/// resumed run that also finishes its DeMix seed) shares the lock instead of refusing itself.
fn held() -> &'static Mutex<HashMap<PathBuf, Weak<File>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<File>>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

impl RunLock {
    /// Locks `dir` (which must exist) or fails at once naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let key = dir.canonicalize().at(dir)?;
        let mut held = held()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(file) = held.get(&key).and_then(Weak::upgrade) {
            return Ok(RunLock { _file: file });
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(&path, error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("another mixtrain process (pid {pid})"),
            };
            return Err(Error::RunDir {
                path: dir.to_path_buf(),
                message: format!(
                    "is in use by {holder}; wait for it to finish or stop it, or set another \
                     run.out_dir"
                ),
            });
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        writeln!(file, "{}", std::process::id()).at(&path)?;
        let file = Arc::new(file);
        held.insert(key, Arc::downgrade(&file));
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_shared_within_the_process_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunLock::acquire(dir.path()).unwrap();
        let b = RunLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        drop((a, b));
        // Released: another open file description can take it.
        let file = File::open(dir.path().join(LOCK_FILE)).unwrap();
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn a_held_lock_refuses_another_holder_naming_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        // Another process holds the lock: an open file description of its own, flocked, and
        // its pid in the file.
        std::fs::write(dir.path().join(LOCK_FILE), "4242\n").unwrap();
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
        let error = RunLock::acquire(dir.path()).err().expect("refused");
        let message = error.to_string();
        assert!(
            message.contains("in use by another mixtrain process (pid 4242)"),
            "{message}"
        );
    }
}
