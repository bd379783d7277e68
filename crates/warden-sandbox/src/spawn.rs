//! Starting the agent: in its cgroup, as an unprivileged user, unable to gain privileges.

use std::ffi::CString;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};

use crate::{Cgroup, SandboxError};

/// Who the agent runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// A user by name or numeric id (`nobody`, `1000`, `1000:1000`). Root is refused: a root
    /// agent could detach the programs or move itself out of its cgroup.
    pub fn lookup(spec: &str) -> Result<Self, SandboxError> {
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        let mut found = match user.parse::<u32>() {
            Ok(uid) => passwd_by_uid(uid).unwrap_or(Self {
                name: uid.to_string(),
                uid,
                gid: uid,
            }),
            Err(_) => passwd_by_name(user).ok_or_else(|| {
                SandboxError::Invalid(format!(
                    "no user {user:?} on this system: pass --user with an existing user or a numeric uid"
                ))
            })?,
        };
        if let Some(group) = group {
            found.gid = group.parse().map_err(|_| {
                SandboxError::Invalid(format!("the group in {spec:?} must be a numeric gid"))
            })?;
        }
        if found.uid == 0 || found.gid == 0 {
            return Err(SandboxError::Invalid(
                "the agent may not run as root (uid or gid 0): root can leave its confinement; pass --user with an unprivileged user".into(),
            ));
        }
        Ok(found)
    }
}

fn passwd_by_name(name: &str) -> Option<User> {
    let name = CString::new(name).ok()?;
    // SAFETY: getpwnam_r writes only into the entry and buffer `passwd` passes, sized as passed.
    #[allow(unsafe_code)]
    passwd(|entry, buffer, length, result| unsafe {
        libc::getpwnam_r(name.as_ptr(), entry, buffer, length, result)
    })
}

fn passwd_by_uid(uid: u32) -> Option<User> {
    // SAFETY: as in `passwd_by_name`.
    #[allow(unsafe_code)]
    passwd(|entry, buffer, length, result| unsafe {
        libc::getpwuid_r(uid, entry, buffer, length, result)
    })
}

/// Runs a getpw*_r lookup with an entry and a buffer of its own, and reads the user it found.
fn passwd(
    mut lookup: impl FnMut(
        *mut libc::passwd,
        *mut libc::c_char,
        usize,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Option<User> {
    // SAFETY: the entry is plain data a zeroed value is valid for; the lookup fills it and points
    // its strings into `buffer`, which outlives the read in `user_of`.
    #[allow(unsafe_code)]
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut result = std::ptr::null_mut();
        let status = lookup(&mut entry, buffer.as_mut_ptr(), buffer.len(), &mut result);
        if status != 0 || result.is_null() {
            return None;
        }
        Some(user_of(&entry))
    }
}

/// SAFETY (callers): `entry` was filled by a successful getpw*_r whose buffer is still live.
#[allow(unsafe_code)]
unsafe fn user_of(entry: &libc::passwd) -> User {
    // SAFETY: see above; `pw_name` is a NUL-terminated string in that buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    User {
        name: name.to_string_lossy().into_owned(),
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    }
}

/// Starts `command` inside `cgroup` as `user`. Between fork and exec the child enters the
/// cgroup (while still root, so it can), drops every group and id to the user's, and sets
/// no-new-privileges, so no set-uid program it runs regains the power to leave.
pub fn spawn(mut command: Command, cgroup: &Cgroup, user: &User) -> Result<Child, SandboxError> {
    let procs = cgroup.path().join("cgroup.procs");
    let procs_path = CString::new(procs.as_os_str().as_encoded_bytes())
        .map_err(|_| SandboxError::Invalid(format!("{} has a NUL byte", procs.display())))?;
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (open, write, close, setgroups, setresgid, setresuid, prctl) on data prepared
    // before the fork; it allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs_path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| SandboxError::io("cannot start the agent", e))
}

/// Sends SIGKILL to a process.
pub(crate) fn kill(pid: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_refused_and_numeric_users_are_taken() {
        assert!(matches!(
            User::lookup("root"),
            Err(SandboxError::Invalid(_))
        ));
        assert!(matches!(User::lookup("0"), Err(SandboxError::Invalid(_))));
        assert!(matches!(
            User::lookup("1000:0"),
            Err(SandboxError::Invalid(_))
        ));
        let user = User::lookup("54321:54322").expect("numeric user");
        assert_eq!((user.uid, user.gid), (54321, 54322));
        assert!(User::lookup("no-such-user-here").is_err());
    }
}
