//! The coordinator's side of the worker processes: spawning them, talking
//! to them over stdin/stdout, and collecting their reports.

use std::cell::{Cell, RefCell};
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::worker::{Command, Event, Progress, WorkerReport};

/// One worker process as the coordinator sees it.
pub(crate) struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    pub(crate) ready: Rc<Cell<bool>>,
    alive: Rc<Cell<bool>>,
    progress: Rc<RefCell<Progress>>,
    report: Rc<RefCell<Option<WorkerReport>>>,
    error: Rc<RefCell<Option<String>>>,
}

impl WorkerProc {
    pub(crate) fn spawn() -> Result<WorkerProc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let mut child = tokio::process::Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let w = WorkerProc {
            child,
            stdin: Some(stdin),
            ready: Rc::default(),
            alive: Rc::new(Cell::new(true)),
            progress: Rc::default(),
            report: Rc::default(),
            error: Rc::default(),
        };
        let (ready, alive, progress, report, error) = (
            w.ready.clone(),
            w.alive.clone(),
            w.progress.clone(),
            w.report.clone(),
            w.error.clone(),
        );
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(Event::Ready) => ready.set(true),
                    Ok(Event::Progress(p)) => *progress.borrow_mut() = p,
                    Ok(Event::Report(r)) => *report.borrow_mut() = Some(*r),
                    Ok(Event::Error { message }) => *error.borrow_mut() = Some(message),
                    Err(e) => *error.borrow_mut() = Some(format!("bad line {line:?}: {e}")),
                }
            }
            alive.set(false);
        });
        Ok(w)
    }

    pub(crate) async fn send(&mut self, cmd: &Command) -> Result<(), String> {
        let mut line = serde_json::to_vec(cmd).expect("serializable");
        line.push(b'\n');
        let stdin = self.stdin.as_mut().ok_or("worker already told to exit")?;
        stdin
            .write_all(&line)
            .await
            .map_err(|e| format!("worker gone: {e}"))
    }

    fn check(&self, i: usize) -> Result<(), String> {
        if let Some(e) = self.error.borrow().as_ref() {
            return Err(format!("worker {i}: {e}"));
        }
        if !self.alive.get() {
            return Err(format!("worker {i} exited"));
        }
        Ok(())
    }
}

pub(crate) struct Workers(pub(crate) Vec<WorkerProc>);

impl Workers {
    pub(crate) fn progress(&self) -> Progress {
        let mut t = Progress::default();
        for w in &self.0 {
            let p = w.progress.borrow();
            t.opened += p.opened;
            t.failed += p.failed;
            t.closed += p.closed;
            t.receiving += p.receiving;
        }
        t
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        self.0.iter().enumerate().try_for_each(|(i, w)| w.check(i))
    }

    pub(crate) async fn send_all(&mut self, cmd: &Command) -> Result<(), String> {
        for w in &mut self.0 {
            w.send(cmd).await?;
        }
        Ok(())
    }

    pub(crate) async fn until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Workers) -> bool,
    ) -> Result<bool, String> {
        let end = Instant::now() + timeout;
        loop {
            self.check()?;
            if done(self) {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn shutdown(mut self) {
        // A worker exits when its stdin closes.
        for w in &mut self.0 {
            drop(w.stdin.take());
        }
        for w in &mut self.0 {
            if tokio::time::timeout(Duration::from_secs(5), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.start_kill();
            }
        }
    }
}

/// Asks every worker for its report and waits for them all.
pub(crate) async fn collect(workers: &mut Workers, published: Vec<u64>) -> Result<Vec<WorkerReport>, String> {
    workers.send_all(&Command::Report { published }).await?;
    if !workers
        .until(Duration::from_secs(60), |w| {
            w.0.iter().all(|p| p.report.borrow().is_some())
        })
        .await?
    {
        return Err("workers did not report".into());
    }
    Ok(workers
        .0
        .iter()
        .map(|w| w.report.borrow_mut().take().expect("checked"))
        .collect())
}
