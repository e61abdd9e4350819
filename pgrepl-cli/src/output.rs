//! Progress display: one spinner per running step, on stderr (plain lines when stderr
//! is not a terminal).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pgrepl_core::deploy::Progress;

/// Spinners for [`Progress`] events.
pub struct Spinners {
    enabled: bool,
    tty: bool,
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, String), (ProgressBar, Instant)>>,
}

impl Spinners {
    /// `enabled`: show anything at all (text output).
    pub fn new(enabled: bool) -> Self {
        Spinners { enabled, tty: std::io::stderr().is_terminal(), multi: MultiProgress::new(), bars: Mutex::new(HashMap::new()) }
    }

    /// Removes finished spinners before the report is printed.
    pub fn clear(&self) {
        let _ = self.multi.clear();
    }
}

impl Progress for Spinners {
    fn started(&self, node: &str, step: &str) {
        if !self.enabled {
            return;
        }
        let key = (node.to_string(), step.to_string());
        if !self.tty {
            eprintln!("{node}: {step} ...");
            self.bars.lock().expect("lock").insert(key, (ProgressBar::hidden(), Instant::now()));
            return;
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("{spinner} {prefix:<8} {msg} {elapsed}").expect("valid template"));
        bar.set_prefix(node.to_string());
        bar.set_message(step.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bars.lock().expect("lock").insert(key, (bar, Instant::now()));
    }

    fn update(&self, node: &str, step: &str, detail: &str) {
        if !self.enabled {
            return;
        }
        if let Some((bar, _)) = self.bars.lock().expect("lock").get(&(node.to_string(), step.to_string())) {
            if self.tty {
                bar.set_message(format!("{step}: {detail}"));
            } else {
                eprintln!("{node}: {step}: {detail}");
            }
        }
    }

    fn finished(&self, node: &str, step: &str, outcome: &str) {
        if !self.enabled {
            return;
        }
        let entry = self.bars.lock().expect("lock").remove(&(node.to_string(), step.to_string()));
        if let Some((bar, t)) = entry {
            let line = format!("{node}: {step}: {outcome} ({:.1}s)", t.elapsed().as_secs_f64());
            if self.tty {
                bar.finish_and_clear();
                let _ = self.multi.println(line);
            } else {
                eprintln!("{line}");
            }
        }
    }
}
