//! The director decides what the host says next. In this first form it plays the show script's
//! segments in order, in a loop forever, and has each line synthesised ahead of time.
//!
//! It runs on its own thread (synthesis blocks) and hands finished utterances to the media clock
//! through a bounded channel of [`UTTERANCE_QUEUE`] entries with the *block* policy: the director
//! simply waits, which keeps it a couple of lines ahead and never more. A line that fails to
//! synthesise is skipped, reported and counted; the show goes on with the next one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::script::ShowScript;
use crate::tts::{EspeakVoice, Speech};

/// Utterances synthesised ahead of the one being spoken.
pub const UTTERANCE_QUEUE: usize = 2;

/// Something the host will say, ready to play.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub speech: Speech,
    /// Silence after it, before anything else is said.
    pub gap_after_ms: u32,
    pub segment: String,
}

impl Utterance {
    pub fn gap_after_samples(&self, rate: u32) -> u64 {
        self.gap_after_ms as u64 * rate as u64 / 1000
    }
}

#[derive(Debug, Default)]
pub struct DirectorStats {
    pub lines_synthesised: AtomicU64,
    pub lines_failed: AtomicU64,
}

/// A position in the script: which segment, which line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub segment: usize,
    pub line: usize,
}

/// Walks the script's lines in order, looping forever, skipping segments with no lines.
pub struct ScriptPlayer {
    script: ShowScript,
    cursor: Cursor,
    line_gap_ms: u32,
    segment_gap_ms: u32,
}

impl ScriptPlayer {
    pub fn new(script: ShowScript, line_gap_ms: u32, segment_gap_ms: u32) -> Self {
        Self { script, cursor: Cursor::default(), line_gap_ms, segment_gap_ms }
    }

    /// The next line's text (fields filled in), its segment name and the gap after it.
    pub fn next_line(&mut self) -> (String, String, u32) {
        let segments = &self.script.segments;
        while segments[self.cursor.segment].lines.is_empty() {
            self.cursor = Cursor { segment: (self.cursor.segment + 1) % segments.len(), line: 0 };
        }
        let seg = &segments[self.cursor.segment];
        let text = self.script.render_line(seg, seg.lines[self.cursor.line].get_ref());
        let name = seg.name.clone();
        let last_in_segment = self.cursor.line + 1 >= seg.lines.len();
        self.cursor = if last_in_segment {
            Cursor { segment: (self.cursor.segment + 1) % segments.len(), line: 0 }
        } else {
            Cursor { line: self.cursor.line + 1, ..self.cursor }
        };
        (text, name, if last_in_segment { self.segment_gap_ms } else { self.line_gap_ms })
    }
}

/// Starts the director thread; returns the receiving end of its utterance queue.
pub fn spawn(
    shutdown: &crate::shutdown::Shutdown,
    mut player: ScriptPlayer,
    voice: EspeakVoice,
    stats: Arc<DirectorStats>,
) -> std::io::Result<Receiver<Utterance>> {
    let (tx, rx) = sync_channel::<Utterance>(UTTERANCE_QUEUE);
    let cancel = shutdown.token();
    shutdown.spawn_thread("director", move || run(&mut player, &voice, &tx, &cancel, &stats))?;
    Ok(rx)
}

fn run(
    player: &mut ScriptPlayer,
    voice: &EspeakVoice,
    tx: &SyncSender<Utterance>,
    cancel: &CancellationToken,
    stats: &DirectorStats,
) {
    let _span = tracing::info_span!("director").entered();
    let mut consecutive_failures = 0u32;
    while !cancel.is_cancelled() {
        let (text, segment, gap_after_ms) = player.next_line();
        match voice.synthesize(&text) {
            Ok(speech) => {
                consecutive_failures = 0;
                stats.lines_synthesised.fetch_add(1, Ordering::Relaxed);
                // Blocks while the queue is full: that is the intended back-pressure. A closed
                // queue means the show is over.
                if tx.send(Utterance { speech, gap_after_ms, segment }).is_err() {
                    return;
                }
            }
            Err(e) => {
                stats.lines_failed.fetch_add(1, Ordering::Relaxed);
                consecutive_failures += 1;
                tracing::warn!(%segment, error = %e, "line skipped: synthesis failed");
                // Do not spin if every line fails (the clock fills the gap with silence).
                std::thread::sleep(Duration::from_millis(50 * consecutive_failures.min(20) as u64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_loop_forever_with_gaps() {
        let script = ShowScript::parse(
            "s.toml",
            r#"
[show]
title = "t"
language = "en"
host = "h"
[[segments]]
name = "a"
lines = ["one", "two"]
[[segments]]
name = "empty"
lines = []
[[segments]]
name = "b"
lines = ["three"]
"#,
        )
        .unwrap();
        let mut p = ScriptPlayer::new(script, 300, 900);
        let said: Vec<(String, u32)> = (0..7).map(|_| p.next_line()).map(|(t, _, g)| (t, g)).collect();
        let texts: Vec<&str> = said.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three", "one", "two", "three", "one"]);
        assert_eq!(said[0].1, 300);
        assert_eq!(said[1].1, 900);
        assert_eq!(said[2].1, 900);
    }
}
