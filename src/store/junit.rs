//! JUnit XML test results → a summary (tests, failures, the names of the failed tests).

use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TestSummary {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    /// `classname.name` of each failed or errored test case.
    pub failed: Vec<String>,
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
    // The open test case: its name and whether a failure was seen in it.
    let mut case: Option<(String, bool)> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match ev {
            Event::Start(e) if e.name().as_ref() == b"testcase" => {
                sum.tests += 1;
                case = Some((case_name(&e), false));
            }
            // An empty <testcase/> passed: it has no children and no End event.
            Event::Empty(e) if e.name().as_ref() == b"testcase" => sum.tests += 1,
            Event::Start(e) | Event::Empty(e) => {
                if let Some((name, seen)) = case.as_mut() {
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
                    if failed && !*seen {
                        *seen = true;
                        sum.failed.push(name.clone());
                    }
                }
            }
            Event::End(e) if e.name().as_ref() == b"testcase" => case = None,
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(sum)
}

fn case_name(e: &quick_xml::events::BytesStart) -> String {
    let mut name = String::new();
    let mut class = String::new();
    for a in e.attributes().flatten() {
        let v = a
            .unescape_value()
            .map(|v| v.into_owned())
            .unwrap_or_default();
        match a.key.as_ref() {
            b"name" => name = v,
            b"classname" => class = v,
            _ => {}
        }
    }
    if class.is_empty() {
        name
    } else {
        format!("{class}.{name}")
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
        assert_eq!(s.failed, ["math.divides", "io.reads"]);
        assert!(parse("<a></b>").is_err());
    }
}
