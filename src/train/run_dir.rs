//! The run folder: its name, the lock that keeps a second training out of it, and the
//! clean-up of partial writes that a killed run left behind.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `project/name`, or `project/name2`, `name3`, … when it exists and `exist_ok` is false.
pub fn run_dir(project: &Path, name: &str, exist_ok: bool) -> PathBuf {
    let first = project.join(name);
    if exist_ok || !first.exists() {
        return first;
    }
    (2..).map(|i| project.join(format!("{name}{i}"))).find(|p| !p.exists()).expect("a free name")
}

/// Held for as long as a training writes into its run folder; the operating system
/// releases it when the process ends, however it ends.
pub struct RunLock {
    _file: File,
}

/// Creates `dir` and `dir/weights`, takes the folder's lock, and removes the temporary files
/// of writes (checkpoints, results.csv) that a killed run left (no other run can be writing them now).
pub fn claim(dir: &Path) -> Result<RunLock> {
    let wdir = dir.join("weights");
    std::fs::create_dir_all(&wdir).with_context(|| format!("cannot create {}", wdir.display()))?;
    let path = dir.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "another training is writing to {} (it holds {}); wait for it, or choose another --name",
            dir.display(),
            path.display()
        );
    }
    for folder in [dir, wdir.as_path()] {
        for entry in std::fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))? {
            let p = entry?.path();
            if crate::files::is_partial_write(&p) {
                eprintln!("removing {}, a write that a stopped run did not finish", p.display());
                std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
    }
    Ok(RunLock { _file: file })
}
