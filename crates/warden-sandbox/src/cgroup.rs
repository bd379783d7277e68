//! An agent's cgroup in the v2 hierarchy: `<hierarchy>/warden/<name>`, owned by root so the
//! agent (an unprivileged user) can neither leave it nor make sub-groups of its own.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::SandboxError;

/// The directory under the hierarchy that holds agents' cgroups.
const PARENT: &str = "warden";

#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    id: u64,
}

impl Cgroup {
    /// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
    /// on hybrid systems).
    pub fn hierarchy() -> Result<PathBuf, SandboxError> {
        if !cfg!(target_os = "linux") {
            return Err(SandboxError::NotLinux);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| SandboxError::io("cannot read /proc/self/mountinfo", e))?;
        hierarchy_in(&mounts).ok_or(SandboxError::NoCgroup2)
    }

    /// Creates the cgroup for one agent instance. `name` is a single path segment.
    pub fn create(name: &str) -> Result<Self, SandboxError> {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || name.starts_with('.')
        {
            return Err(SandboxError::Invalid(format!(
                "{name:?} is not a cgroup name (letters, digits, `-`, `_`, `.`)"
            )));
        }
        let parent = Self::hierarchy()?.join(PARENT);
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(SandboxError::io(
                    format!("cannot create {} (run as root)", parent.display()),
                    e,
                ));
            }
        }
        let path = parent.join(name);
        std::fs::create_dir(&path)
            .map_err(|e| SandboxError::io(format!("cannot create {}", path.display()), e))?;
        Self::open(&path)
    }

    /// An existing agent cgroup, as the gateway is told of it: it must be a directory of the
    /// v2 hierarchy under `warden/`.
    pub fn open(path: &Path) -> Result<Self, SandboxError> {
        let parent = Self::hierarchy()?.join(PARENT);
        let path = path
            .canonicalize()
            .map_err(|e| SandboxError::io(format!("no cgroup at {}", path.display()), e))?;
        if path.parent() != Some(parent.as_path()) {
            return Err(SandboxError::Invalid(format!(
                "{} is not an agent cgroup (they live in {})",
                path.display(),
                parent.display()
            )));
        }
        let metadata = std::fs::metadata(&path)
            .map_err(|e| SandboxError::io(format!("cannot stat {}", path.display()), e))?;
        // On cgroup v2 the directory's inode number is the cgroup's id, which is what the
        // kernel reports to the programs for the processes in it.
        Ok(Self {
            id: metadata.ino(),
            path,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The processes in the cgroup now.
    pub fn processes(&self) -> Result<Vec<u32>, SandboxError> {
        let file = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| SandboxError::io(format!("cannot read {}", file.display()), e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Kills every process in the cgroup, including any started since. A cgroup already gone
    /// has none.
    pub fn kill(&self) -> Result<(), SandboxError> {
        if !self.path.exists() {
            return Ok(());
        }
        // `cgroup.kill` (Linux 5.14) kills atomically, racing no fork.
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.processes()? {
            if let Ok(pid) = i32::try_from(pid) {
                crate::spawn::kill(pid);
            }
        }
        Ok(())
    }

    /// Kills what is left, waits for the cgroup to empty and removes it; the programs attached
    /// to it go with it. Removing it again does nothing.
    pub fn remove(&self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.kill()?;
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(SandboxError::io(
                        format!("cannot remove {}", self.path.display()),
                        e,
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// The mount point of the cgroup2 file system in a mountinfo listing.
fn hierarchy_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options… - fstype source super-options`
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_controllers() {
        let hybrid = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            hierarchy_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(hierarchy_in("26 25 0:23 / /x rw - cgroup cgroup rw"), None);
    }

    #[test]
    fn names_are_single_segments() {
        for bad in ["", "..", "a/b", ".hidden", "a b"] {
            assert!(
                matches!(Cgroup::create(bad), Err(SandboxError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
