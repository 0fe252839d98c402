//! `page_stats` over partitions: the merged answer over any split of the
//! users is the answer of one instance over all the events.

use weft_plugin::native::{TestEvent, answers, sample_events};

const QUERIES: &[&[(&str, &str)]] = &[&[]];

fn run(partitions: usize, events: &[TestEvent]) -> Vec<Result<String, String>> {
    answers(
        page_stats::native_plugin,
        "{}",
        partitions,
        events,
        101,
        QUERIES,
    )
    .expect("runs")
}

#[test]
fn three_partitions_answer_as_one() {
    for seed in 0..4 {
        let events = sample_events(seed, 15, 2000);
        let one = run(1, &events);
        assert!(one[0].as_ref().unwrap().contains("bounce_rate"));
        assert_eq!(run(3, &events), one, "seed {seed}");
        assert_eq!(run(5, &events), one, "seed {seed}");
    }
}

#[test]
fn a_rate_without_a_denominator_is_null() {
    // One page view whose session has no later event: no timed view.
    let events = [TestEvent {
        time: 1_000,
        user: "u".into(),
        session: "u:1000".into(),
        name: "page_view".into(),
        path: "/".into(),
        ..TestEvent::default()
    }];
    assert_eq!(
        run(3, &events)[0].as_deref(),
        Ok(
            r#"{"paths":{"/":{"bounce_rate":1.0,"bounces":1,"entries":1,"time_on_page_ms":null,"timed_views":0,"views":1}}}"#
        )
    );
    assert_eq!(run(3, &[])[0].as_deref(), Ok(r#"{"paths":{}}"#));
}
