//! [`FaultFs`]: the fault-injecting FUSE file system of tests/faultfs,
//! mounted by the test (as root, as CI runs) in its own temp directory.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use super::*;

/// A mounted fault file system: files written under [`FaultFs::path`] reach
/// its backing directory only when fsynced; [`FaultFs::set`] turns faults on
/// and off; [`FaultFs::power_cut`] loses what was not fsynced.
pub struct FaultFs {
    dirs: tempfile::TempDir,
    process: Option<(Child, ChildStdin)>,
    replies: Option<mpsc::Receiver<String>>,
}

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faultfs/.venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: scripts/test creates it (python3 -m venv, pip install -r tests/faultfs/requirements.txt)",
        venv.display()
    );
    venv
}

impl FaultFs {
    pub fn mount() -> Self {
        let dirs = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dirs.path().join("backing")).expect("backing dir");
        std::fs::create_dir(dirs.path().join("mnt")).expect("mount point");
        let mut fs = Self {
            dirs,
            process: None,
            replies: None,
        };
        fs.start();
        fs
    }

    /// The mount point.
    pub fn path(&self) -> PathBuf {
        self.dirs.path().join("mnt")
    }

    /// Where fsynced data lives (what survives a power cut).
    pub fn backing(&self) -> PathBuf {
        self.dirs.path().join("backing")
    }

    fn start(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faultfs/faultfs.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(self.backing())
            .arg(self.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start faultfs.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (lines, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        self.process = Some((child, stdin));
        self.replies = Some(replies);
        self.expect_line(|line| line == "ready", "ready");
    }

    fn expect_line(&self, matches: impl Fn(&str) -> bool, what: &str) -> String {
        let replies = self.replies.as_ref().expect("mounted");
        loop {
            let line = replies
                .recv_timeout(PROMPTLY)
                .unwrap_or_else(|_| panic!("faultfs did not answer {what}"));
            if matches(&line) {
                return line;
            }
        }
    }

    /// Sends one command (`eio on`, `full off`, `delay 50`, ...) and waits
    /// until it has taken effect.
    pub fn set(&mut self, command: &str) -> String {
        let (_, stdin) = self.process.as_mut().expect("mounted");
        writeln!(stdin, "{command}").expect("write to faultfs");
        stdin.flush().expect("flush to faultfs");
        let reply = self.expect_line(
            |line| line.starts_with("ok") || line.starts_with("error"),
            command,
        );
        assert!(
            reply.starts_with("ok"),
            "faultfs refused {command:?}: {reply}"
        );
        reply
    }

    /// Everything not fsynced is lost, then the file system is mounted
    /// again so that no kernel cache of the lost data survives. Kill the
    /// program using it first.
    pub fn power_cut(&mut self) {
        self.set("cut");
        self.unmount();
        self.start();
    }

    fn unmount(&mut self) {
        if let Some((mut child, mut stdin)) = self.process.take() {
            let _ = writeln!(stdin, "quit");
            drop(stdin);
            // It exits once the last file on it is closed; a program still
            // using it (a test that failed early) must not hang the suite.
            let deadline = std::time::Instant::now() + PROMPTLY;
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.replies = None;
        // In case the process died without unmounting.
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(self.path())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
