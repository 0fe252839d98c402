//! `event_counts` over partitions: the merged answer over any split of the
//! users is the answer of one instance over all the events.

use weft_plugin::native::{TestEvent, answers, sample_events};

const QUERIES: &[&[(&str, &str)]] = &[&[], &[("ignored", "1")]];

fn run(partitions: usize, events: &[TestEvent]) -> Vec<Result<String, String>> {
    answers(
        event_counts::native_plugin,
        "{}",
        partitions,
        events,
        97,
        QUERIES,
    )
    .expect("runs")
}

#[test]
fn three_partitions_answer_as_one() {
    for seed in 0..4 {
        let events = sample_events(seed, 12, 1500);
        let one = run(1, &events);
        assert_eq!(run(3, &events), one, "seed {seed}");
        assert_eq!(run(7, &events), one, "seed {seed}");
    }
}

#[test]
fn answers_the_counts() {
    let events = sample_events(1, 5, 300);
    let mut want = std::collections::BTreeMap::<&str, u64>::new();
    for e in &events {
        *want.entry(&e.name).or_default() += 1;
    }
    let got = run(3, &events).remove(0).expect("answers");
    assert_eq!(got, serde_json_text(&want));
    assert_eq!(run(3, &[]).remove(0).expect("answers"), r#"{"counts":{}}"#);
}

fn serde_json_text(counts: &std::collections::BTreeMap<&str, u64>) -> String {
    let body: Vec<String> = counts.iter().map(|(k, n)| format!("{k:?}:{n}")).collect();
    format!(r#"{{"counts":{{{}}}}}"#, body.join(","))
}
