//! `funnel` over partitions: the merged answer over any split of the users
//! is the answer of one instance over all the events.

use weft_plugin::native::{TestEvent, answers, sample_events};

const QUERIES: &[&[(&str, &str)]] = &[&[], &[("ignored", "1")]];

const CONFIGS: &[&str] = &[
    "{}",
    r#"{"steps": ["page_view", "page_view", "purchase"]}"#,
    r#"{"steps": ["scroll"], "gap_ms": 60000}"#,
    r#"{"steps": ["never", "page_view"]}"#,
];

fn run(config: &str, partitions: usize, events: &[TestEvent]) -> Vec<Result<String, String>> {
    answers(
        funnel::native_plugin,
        config,
        partitions,
        events,
        89,
        QUERIES,
    )
    .expect("runs")
}

#[test]
fn three_partitions_answer_as_one() {
    for seed in 0..3 {
        let events = sample_events(seed, 20, 2000);
        for config in CONFIGS {
            let one = run(config, 1, &events);
            assert_eq!(run(config, 3, &events), one, "seed {seed}, {config}");
            assert_eq!(run(config, 4, &events), one, "seed {seed}, {config}");
        }
    }
}

#[test]
fn answers_the_shape_it_always_had() {
    let events = sample_events(7, 10, 500);
    let answer = run("{}", 3, &events).remove(0).expect("answers");
    let answer: weft_plugin::serde_json::Value =
        weft_plugin::serde_json::from_str(&answer).unwrap();
    let steps = answer["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[0]["name"], "page_view");
    assert_eq!(steps[0]["conversion_from_first"], 1.0);
    assert!(steps[3]["sessions"].as_u64().unwrap() <= steps[2]["sessions"].as_u64().unwrap());
    assert_eq!(
        run("{}", 3, &[]).remove(0).expect("answers"),
        concat!(
            r#"{"steps":[{"conversion_from_first":0.0,"conversion_from_previous":0.0,"name":"page_view","sessions":0},"#,
            r#"{"conversion_from_first":0.0,"conversion_from_previous":0.0,"name":"add_to_cart","sessions":0},"#,
            r#"{"conversion_from_first":0.0,"conversion_from_previous":0.0,"name":"checkout","sessions":0},"#,
            r#"{"conversion_from_first":0.0,"conversion_from_previous":0.0,"name":"purchase","sessions":0}]}"#
        )
    );
}
