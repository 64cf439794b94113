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

/// The files a command reads, so that none of its outputs replaces one of them: every file the
/// tool writes (predicted images, exports, COCO JSON, run folders) is checked against them
/// before anything is written.
#[derive(Default)]
pub struct Inputs {
    files: Vec<(String, std::path::PathBuf, FileId)>,
}

impl Inputs {
    /// Notes `path`, read through `option` (e.g. `--model`); paths that do not exist (a
    /// built-in model name) are left out.
    pub fn add(&mut self, option: &str, path: impl AsRef<std::path::Path>) -> &mut Self {
        let p = path.as_ref();
        if let Some(id) = file_id(p) {
            self.files.push((option.to_string(), p.to_path_buf(), id));
        }
        self
    }

    /// Refuses `output`, chosen by `option` (e.g. `--output`), when it is one of the inputs,
    /// naming both.
    pub fn check_output(&self, option: &str, output: &std::path::Path) -> anyhow::Result<()> {
        let Some(id) = file_id(output) else { return Ok(()) }; // a new file replaces nothing
        if let Some((input_option, input, _)) = self.files.iter().find(|f| f.2 == id) {
            anyhow::bail!(
                "refusing to write {}: it is {input_option} {}, an input of this command; choose another {option}",
                output.display(),
                input.display()
            );
        }
        Ok(())
    }

    /// Refuses a folder the command writes into (what it is: e.g. `the run folder`) when an
    /// input lies inside it, naming both; `except` is an input that belongs there (the
    /// checkpoint a run resumes from).
    pub fn check_folder(&self, what: &str, dir: &std::path::Path, except: Option<&std::path::Path>) -> anyhow::Result<()> {
        let Ok(dir) = dir.canonicalize() else { return Ok(()) }; // a new folder holds nothing yet
        let except = except.and_then(file_id);
        for (option, input, id) in &self.files {
            if Some(id) != except.as_ref() && input.canonicalize().is_ok_and(|p| p.starts_with(&dir)) {
                anyhow::bail!(
                    "refusing to write into {what} {}: it holds {option} {}, an input of this command, and the run \
                     writes its files there; choose another --name (or --project), or move the input out",
                    dir.display(),
                    input.display()
                );
            }
        }
        Ok(())
    }
}

/// What makes a file the same file whatever the path spelling (links, `..`): device and inode
/// on Unix, the canonical path elsewhere. None when it does not exist.
#[derive(PartialEq, Eq)]
enum FileId {
    #[cfg(unix)]
    Inode(u64, u64),
    #[allow(dead_code)]
    Path(std::path::PathBuf),
}

fn file_id(p: &std::path::Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| FileId::Inode(m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        p.canonicalize().ok().map(FileId::Path)
    }
}

/// Text without the UTF-8 byte-order mark that some editors put at its start.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_an_input_is_refused_by_any_spelling() {
        let dir = std::env::temp_dir().join(format!("yolodistill-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let model = dir.join("m.pt");
        std::fs::write(&model, b"x").unwrap();
        let mut inputs = Inputs::default();
        inputs.add("--model", &model).add("--data", dir.join("missing.yaml"));
        let e = inputs.check_output("--output", &dir.join("sub/../m.pt")).unwrap_err().to_string();
        assert!(e.contains("--output") && e.contains("--model") && e.contains("m.pt"), "{e}");
        assert!(inputs.check_output("--output", &dir.join("m.onnx")).is_ok());
        let e = inputs.check_folder("the run folder", &dir, None).unwrap_err().to_string();
        assert!(e.contains("--model") && e.contains("the run folder"), "{e}");
        assert!(inputs.check_folder("the run folder", &dir, Some(&model)).is_ok());
        assert!(inputs.check_folder("the run folder", &dir.join("sub"), None).is_ok());
        assert_eq!(without_bom("\u{feff}0 0.5"), "0 0.5");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
