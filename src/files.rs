//! Files written so that a crash never leaves a half-written one: a temporary file, then a
//! rename; and the clean-up rule for temporary files that a killed process left.

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader
/// never sees a half-written file and an earlier good file survives a crash.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}{PARTIAL}{}", std::process::id()));
    let seam = crash_seam::Seam::for_write(&name);
    if seam.at("inside") {
        let _ = std::fs::write(&tmp, &bytes[..bytes.len() / 2]);
        std::process::exit(137);
    }
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    if seam.at("after") {
        std::process::exit(137);
    }
    Ok(())
}

/// What marks the temporary file of an atomic write (`.<name>.tmp<pid>`).
const PARTIAL: &str = ".tmp";

/// Whether `path` is the temporary file of an atomic write.
pub fn is_partial_write(path: &std::path::Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.starts_with('.')
        && name.rsplit_once(PARTIAL).is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Test seam for crash safety: `YOLODISTILL_TEST_CRASH=<inside|after>:<file name>@<n>` ends the
/// process with code 137 (as a kill would) inside, or right after, the n-th atomic write of
/// that file in this process.
mod crash_seam {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static WRITES: AtomicUsize = AtomicUsize::new(0);

    pub struct Seam(Option<String>);

    impl Seam {
        pub fn for_write(name: &str) -> Seam {
            let Ok(spec) = std::env::var("YOLODISTILL_TEST_CRASH") else { return Seam(None) };
            let Some((moment, target)) = spec.split_once(':') else { return Seam(None) };
            let Some((file, n)) = target.split_once('@') else { return Seam(None) };
            if file != name {
                return Seam(None);
            }
            let count = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
            Seam((n.parse() == Ok(count)).then(|| moment.to_string()))
        }
        pub fn at(&self, moment: &str) -> bool {
            self.0.as_deref() == Some(moment)
        }
    }
}
