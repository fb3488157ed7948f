//! JUnit XML test results → a summary (tests, failures, the names of the failed tests).

use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TestSummary {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    /// Each failed or errored test case.
    pub failed: Vec<FailedTest>,
}

/// A failed (or errored) test case: its name, class and the failure's message (its
/// `message` attribute, else the first line of its text).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FailedTest {
    pub name: String,
    pub classname: String,
    pub message: String,
}

impl std::fmt::Display for FailedTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.classname.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}.{}", self.classname, self.name)
        }
    }
}

impl TestSummary {
    pub fn merge(&mut self, other: TestSummary) {
        self.tests += other.tests;
        self.failures += other.failures;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.failed.extend(other.failed);
    }
}

/// Count `<testcase>` elements and their `<failure>`/`<error>`/`<skipped>` children. Works
/// for the common dialects (surefire, pytest, jest-junit, go-junit-report): all of them nest
/// test cases the same way, whatever their suite attributes say.
pub fn parse(xml: &str) -> Result<TestSummary, String> {
    let mut reader = Reader::from_str(xml);
    let mut sum = TestSummary::default();
    // The open test case: its failure (once one was seen in it) at `sum.failed[i]`.
    let mut case: Option<(FailedTest, Option<usize>)> = None;
    // Inside a <failure>/<error> whose message is still to come from its text.
    let mut want_text: Option<usize> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match ev {
            Event::Start(e) if e.name().as_ref() == b"testcase" => {
                sum.tests += 1;
                case = Some((case_of(&e), None));
            }
            // An empty <testcase/> passed: it has no children and no End event.
            Event::Empty(e) if e.name().as_ref() == b"testcase" => sum.tests += 1,
            Event::Start(ref e) | Event::Empty(ref e) => {
                let Some((test, seen)) = case.as_mut() else {
                    continue;
                };
                let failed = match e.name().as_ref() {
                    b"failure" => {
                        sum.failures += 1;
                        true
                    }
                    b"error" => {
                        sum.errors += 1;
                        true
                    }
                    b"skipped" => {
                        sum.skipped += 1;
                        false
                    }
                    _ => false,
                };
                if failed && seen.is_none() {
                    let mut t = test.clone();
                    t.message = attr(e, b"message").unwrap_or_default();
                    sum.failed.push(t);
                    let i = sum.failed.len() - 1;
                    *seen = Some(i);
                    if sum.failed[i].message.trim().is_empty() && matches!(ev, Event::Start(_)) {
                        want_text = Some(i);
                    }
                }
            }
            Event::Text(t) => {
                if let Some(i) = want_text {
                    let text = t.decode().map(|c| c.into_owned()).unwrap_or_default();
                    if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
                        sum.failed[i].message = line.to_owned();
                        want_text = None;
                    }
                }
            }
            Event::CData(t) => {
                if let Some(i) = want_text {
                    let text = String::from_utf8_lossy(&t).into_owned();
                    if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
                        sum.failed[i].message = line.to_owned();
                        want_text = None;
                    }
                }
            }
            Event::End(e) if matches!(e.name().as_ref(), b"failure" | b"error") => want_text = None,
            Event::End(e) if e.name().as_ref() == b"testcase" => case = None,
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(sum)
}

fn attr(e: &quick_xml::events::BytesStart, key: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// Each test case's file (its own `file` attribute, else its suite's), class name, name and
/// `time` in seconds, for splitting by timings. Cases without a time are left out.
pub fn case_times(xml: &str) -> Result<Vec<(String, String, String, f64)>, String> {
    let mut reader = Reader::from_str(xml);
    let mut suite_files: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let attr = |e: &quick_xml::events::BytesStart, key: &[u8]| -> Option<String> {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == key)
            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
    };
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match ev {
            Event::Start(e) if e.name().as_ref() == b"testsuite" => {
                let f = attr(&e, b"file")
                    .or_else(|| attr(&e, b"filepath"))
                    .or_else(|| suite_files.last().cloned())
                    .unwrap_or_default();
                suite_files.push(f);
            }
            Event::End(e) if e.name().as_ref() == b"testsuite" => {
                suite_files.pop();
            }
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"testcase" => {
                let Some(time) = attr(&e, b"time").and_then(|t| t.trim().parse::<f64>().ok())
                else {
                    continue;
                };
                if !time.is_finite() || time < 0.0 {
                    continue;
                }
                let file = attr(&e, b"file")
                    .or_else(|| suite_files.last().cloned())
                    .unwrap_or_default();
                out.push((
                    file,
                    attr(&e, b"classname").unwrap_or_default(),
                    attr(&e, b"name").unwrap_or_default(),
                    time,
                ));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

fn case_of(e: &quick_xml::events::BytesStart) -> FailedTest {
    FailedTest {
        name: attr(e, b"name").unwrap_or_default(),
        classname: attr(e, b"classname").unwrap_or_default(),
        message: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cases_failures_and_names() {
        let xml = r#"<?xml version="1.0"?>
<testsuites>
  <testsuite name="unit" tests="4">
    <testcase classname="math" name="adds"/>
    <testcase classname="math" name="divides"><failure message="x">boom</failure></testcase>
    <testcase classname="io" name="reads"><error>eof</error></testcase>
    <testcase classname="io" name="later"><skipped/></testcase>
  </testsuite>
</testsuites>"#;
        let s = parse(xml).expect("parses");
        assert_eq!((s.tests, s.failures, s.errors, s.skipped), (4, 1, 1, 1));
        let names: Vec<String> = s.failed.iter().map(|f| f.to_string()).collect();
        assert_eq!(names, ["math.divides", "io.reads"]);
        assert_eq!(s.failed[0].message, "x");
        // No message attribute: the first line of the text.
        assert_eq!(s.failed[1].message, "eof");
        assert_eq!(s.failed[1].classname, "io");
        assert!(parse("<a></b>").is_err());
    }

    #[test]
    fn case_times_take_the_file_from_the_case_or_its_suite() {
        let xml = r#"<testsuites>
  <testsuite name="s" file="spec/a_spec.rb">
    <testcase classname="A" name="one" time="1.5"/>
    <testcase classname="A" name="two" time="0.25" file="./spec/b_spec.rb"><failure/></testcase>
    <testcase classname="A" name="untimed"/>
  </testsuite>
</testsuites>"#;
        let t = case_times(xml).expect("parses");
        assert_eq!(
            t,
            vec![
                ("spec/a_spec.rb".into(), "A".into(), "one".into(), 1.5),
                ("./spec/b_spec.rb".into(), "A".into(), "two".into(), 0.25),
            ]
        );
    }
}
