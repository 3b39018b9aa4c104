//! A small filesystem of its own under a directory, for the tests that fill
//! a kiosk's disk or make it read-only: a tmpfs in a private mount namespace,
//! so nothing shows (or is left) outside, and no real disk fills.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ProcessGuard;

/// Whether we are root (else a private mount needs a user namespace).
fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `unshare` with a private mount namespace (in a user namespace of its own
/// unless we are root); append the command to run in it.
pub fn private_mount_command() -> Command {
    let mut cmd = Command::new("unshare");
    if !root() {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.arg("--mount");
    cmd
}

/// A tmpfs of a given size mounted over a directory, seen only by the
/// processes started with [`SmallDisk::command`]; it lasts (with what they
/// wrote) until dropped, across restarts of those processes.
#[derive(Debug)]
pub struct SmallDisk {
    dir: PathBuf,
    /// Holds the namespace (and so the mount) open.
    holder: ProcessGuard,
}

impl SmallDisk {
    /// Mounts `bytes` of tmpfs over `dir`. `Ok(None)` where this machine
    /// makes no private mount namespace (not root, and unprivileged user
    /// namespaces are off): the caller says it skipped.
    pub fn new(dir: &Path, bytes: u64) -> Result<Option<Self>, String> {
        if !private_mount_command()
            .arg("true")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(None);
        }
        let mut holder = ProcessGuard::spawn(
            private_mount_command()
                .args([
                    "sh",
                    "-c",
                    r#"mount -t tmpfs -o "size=$1" propass-test "$0" && echo mounted && exec sleep infinity"#,
                ])
                .arg(dir)
                .arg(bytes.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
            "the small disk's namespace",
        )?;
        let out = holder.child().stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "mounted" {
            return Err(format!("cannot mount a tmpfs over {}", dir.display()));
        }
        Ok(Some(Self {
            dir: dir.to_owned(),
            holder,
        }))
    }

    /// `program`, to run where the tmpfs is mounted (`nsenter` into the
    /// namespace; it execs, so the child's pid is the program's).
    pub fn command(&mut self, program: &Path) -> Command {
        let pid = self.holder.child().id().to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &pid]);
        if !root() {
            cmd.args(["--user", "--preserve-credentials"]);
        }
        cmd.args(["--mount", "--"]).arg(program);
        cmd
    }

    /// The directory as seen from the namespace, from outside it.
    fn inside(&mut self) -> PathBuf {
        let root = PathBuf::from(format!("/proc/{}/root", self.holder.child().id()));
        root.join(self.dir.strip_prefix("/").unwrap_or(&self.dir))
    }

    /// Fills the tmpfs to the last byte.
    pub fn fill(&mut self) -> Result<(), String> {
        let path = self.inside().join("filler");
        let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        let chunk = vec![0u8; 64 * 1024];
        let mut len = chunk.len();
        // Down to single bytes: not a page is left.
        while len > 0 {
            match f.write(&chunk[..len]) {
                Ok(0) | Err(_) => len /= 2,
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Frees what [`SmallDisk::fill`] took (nothing when it was not filled).
    pub fn free(&mut self) -> Result<(), String> {
        match std::fs::remove_file(self.inside().join("filler")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}
