//! An image pull as events: each layer's change of status at once, its bytes at most every
//! [`BYTES_EVERY`], and one line for the whole image when it is done. The engine reports
//! bytes many times a second per layer; a terminal redraws them, a log or `--json` would drown.

use crate::executor::LayerProgress;
use crate::stream::{Event, EventSink};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a layer's moving bytes are reported.
const BYTES_EVERY: Duration = Duration::from_millis(250);

pub(super) struct PullReport<'a> {
    image: &'a str,
    sink: &'a dyn EventSink,
    started: Instant,
    layers: Mutex<HashMap<String, Layer>>,
}

struct Layer {
    status: String,
    reported: Instant,
    /// Compressed size, once the engine downloads it (not for a layer it already had).
    size: Option<u64>,
}

impl<'a> PullReport<'a> {
    pub(super) fn new(image: &'a str, sink: &'a dyn EventSink) -> Self {
        PullReport {
            image,
            sink,
            started: Instant::now(),
            layers: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn observe(&self, p: LayerProgress) {
        let now = Instant::now();
        {
            let Ok(mut layers) = self.layers.lock() else {
                return;
            };
            match layers.get_mut(&p.layer) {
                Some(l) if l.status == p.status && now - l.reported < BYTES_EVERY => return,
                Some(l) => {
                    l.status.clone_from(&p.status);
                    l.reported = now;
                    if p.status == "Downloading" {
                        l.size = p.total.or(l.size);
                    }
                }
                None => {
                    layers.insert(
                        p.layer.clone(),
                        Layer {
                            status: p.status.clone(),
                            reported: now,
                            size: p.total.filter(|_| p.status == "Downloading"),
                        },
                    );
                }
            }
        }
        self.sink.emit(&Event::PullProgress {
            image: self.image.to_owned(),
            layer: p.layer,
            status: p.status,
            current: p.current,
            total: p.total,
        });
    }

    /// The pull is over: one line for it, when the engine pulled anything.
    pub(super) fn finish(self) {
        let Ok(layers) = self.layers.into_inner() else {
            return;
        };
        if layers.is_empty() {
            return;
        }
        let fetched: Vec<u64> = layers.values().filter_map(|l| l.size).collect();
        self.sink.emit(&Event::ImagePulled {
            image: self.image.to_owned(),
            layers: fetched.len(),
            bytes: fetched.iter().sum(),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::MemorySink;

    fn progress(
        layer: &str,
        status: &str,
        current: Option<u64>,
        total: Option<u64>,
    ) -> LayerProgress {
        LayerProgress {
            layer: layer.to_owned(),
            status: status.to_owned(),
            current,
            total,
        }
    }

    #[test]
    fn status_changes_pass_bytes_are_thinned_and_the_pull_is_summed() {
        let sink = MemorySink::default();
        let report = PullReport::new("registry.test/app:1", &sink);
        report.observe(progress("aaaaaaaaaaaa", "Pulling fs layer", None, None));
        report.observe(progress("bbbbbbbbbbbb", "Already exists", None, None));
        for i in 1..=100 {
            report.observe(progress(
                "aaaaaaaaaaaa",
                "Downloading",
                Some(i * 1000),
                Some(100_000),
            ));
        }
        report.observe(progress("aaaaaaaaaaaa", "Download complete", None, None));
        report.observe(progress("aaaaaaaaaaaa", "Pull complete", None, None));
        report.finish();
        let events = sink.events.lock().expect("events").clone();
        let downloading = events
            .iter()
            .filter(|e| matches!(e, Event::PullProgress { status, .. } if status == "Downloading"))
            .count();
        // The first byte report passes (a change of status); the other 99 came within 250 ms.
        assert_eq!(downloading, 1, "{events:?}");
        let statuses: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::PullProgress { status, .. } if status != "Downloading" => {
                    Some(status.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            statuses,
            [
                "Pulling fs layer",
                "Already exists",
                "Download complete",
                "Pull complete"
            ]
        );
        match events.last() {
            Some(Event::ImagePulled { layers, bytes, .. }) => {
                assert_eq!(
                    (*layers, *bytes),
                    (1, 100_000),
                    "only the fetched layer counts"
                );
            }
            other => panic!("no summary: {other:?}"),
        }
    }

    #[test]
    fn an_image_already_present_says_nothing() {
        let sink = MemorySink::default();
        PullReport::new("app", &sink).finish();
        assert!(sink.events.lock().expect("events").is_empty());
    }
}
