//! Several `weft` hosts in one consumer group, through the real binary, a
//! real broker and real HTTP: Kafka spreads the topic's partitions over the
//! hosts, each keeps the state of the partitions it owns, and a partition
//! that moves is restored on its new owner from the `GROUP-changelog` topic
//! and resumed at the offset recorded with that state.
//!
//! Whatever joins, leaves or is killed with SIGKILL mid-stream, the merged
//! answers of `core`, `event_counts` and `funnel` on any host, and the status
//! counters summed over the live hosts, must equal the plain reference
//! implementation exactly: nothing lost, nothing counted twice.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::{Value, json};
use weft_tests::{
    broker::{brokers, create_topic, kafka_args, produce},
    clickstream::{Stream, generate},
    group::{DEADLINE, ask, group, numbers, partitions, received, settled},
    process::Weft,
    reference, wait_for,
};

const LATENESS_MS: i64 = 5_000;
/// How long a clean stop (SIGTERM) may take: the last state goes to the changelog.
const STOP_WITHIN: Duration = Duration::from_secs(120);
/// What a host logs when it takes over a partition whose state another host wrote.
const RESTORED: &str = "Partition restored from the changelog";
/// What a host logs when it finds another host took a partition it still held.
const FENCED: &str = "was taken by another host while this one still held it";
/// What a host logs when a partition is revoked from it.
const HANDED_OVER: &str = "Partition handed over";
/// The status counters that sum over the hosts.
const COUNTERS: [&str; 4] = ["received", "accepted", "rejected", "duplicates"];

/// What the whole group must answer for a stream.
struct Expected {
    /// The whole stream's `status["events"]`.
    counters: Value,
    /// Each plugin's answer.
    answers: [(&'static str, Value); 3],
}

fn expected(stream: &Stream) -> Expected {
    Expected {
        counters: json!({
            "received": stream.deliveries.len(),
            "accepted": stream.events.len(),
            "rejected": stream.malformed.values().sum::<u64>(),
            "duplicates": stream.duplicates,
            "rejected_by_reason": stream.malformed,
        }),
        answers: [
            ("core", reference::core(&stream.events)),
            ("event_counts", reference::event_counts(&stream.events)),
            ("funnel", reference::funnel(&stream.events)),
        ],
    }
}

/// One `weft.toml` for every host of a group: checkpoints (and changelog
/// writes) every 200 ms.
fn write_config(dir: &Path) -> String {
    write_config_as(dir, "weft.toml", 200)
}

/// `dir/name`, checkpointing every `interval_ms`.
fn write_config_as(dir: &Path, name: &str, interval_ms: u64) -> String {
    let path = dir.join(name);
    let text = format!(
        "[pipeline]\nlateness_ms = {LATENESS_MS}\ncheckpoint_interval_ms = {interval_ms}\nbatch_size = 256\n"
    );
    std::fs::write(&path, text).expect("write weft.toml");
    path.display().to_string()
}

/// Waits until `host`'s view of the group is `hosts`, by URL, owning every
/// partition once between them, with `host` itself as `me`.
fn wait_for_members(host: &Weft, hosts: &[&Weft], name: &str, topic_partitions: u64) {
    let mut urls: Vec<&str> = hosts.iter().map(|h| h.base.as_str()).collect();
    urls.sort_unstable();
    wait_for(
        &format!("{}'s view of the group to be {urls:?}", host.base),
        DEADLINE,
        || {
            let group = group(host)?;
            let members = group["members"]
                .as_array()
                .ok_or_else(|| format!("no members in {group}"))?;
            let mut seen: Vec<&str> = members.iter().filter_map(|m| m["url"].as_str()).collect();
            seen.sort_unstable();
            let mut all = Vec::new();
            for m in members {
                all.extend(partitions(m)?);
            }
            all.sort_unstable();
            let me_is_me = members
                .iter()
                .all(|m| (m["me"] == json!(true)) == (m["url"] == json!(host.base)));
            let right = group["group"] == json!(name)
                && group["topic_partitions"] == json!(topic_partitions)
                && seen == urls
                && me_is_me
                && all == (0..topic_partitions).collect::<Vec<u64>>();
            if right {
                Ok(Some(()))
            } else {
                Err(group.to_string())
            }
        },
    );
}

/// Polls until every merged answer on `host` equals the reference, then
/// checks them all once more: they stay.
fn wait_for_exact_answers(host: &Weft, name: &str, want: &Expected) {
    for (plugin, answer) in &want.answers {
        let path = format!("/api/plugins/{plugin}/query");
        wait_for(
            &format!("{name}'s merged {plugin} answer to equal the reference"),
            DEADLINE,
            || {
                let (code, got) = ask(host, &path)?;
                if code == 200 && got == *answer {
                    Ok(Some(()))
                } else {
                    Err(format!("{code}: {got}; want {answer}"))
                }
            },
        );
    }
    for (plugin, answer) in &want.answers {
        let got = host.get(&format!("/api/plugins/{plugin}/query"));
        assert_eq!(&got, answer, "{name}'s merged {plugin} answer");
    }
}

/// `status["events"]` summed over `hosts`: the counters and the rejections
/// by reason (reasons with none left out).
fn summed_counters(hosts: &[&Weft]) -> Result<Value, String> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for host in hosts {
        let status = host.try_get("/api/status")?;
        let events = &status["events"];
        for counter in COUNTERS {
            *sums.entry(counter).or_default() += events[counter]
                .as_u64()
                .ok_or_else(|| format!("no {counter} in {status}"))?;
        }
        let reasons = events["rejected_by_reason"]
            .as_object()
            .ok_or_else(|| format!("no rejected_by_reason in {status}"))?;
        for (reason, n) in reasons {
            *by_reason.entry(reason.clone()).or_default() += n
                .as_u64()
                .ok_or_else(|| format!("a count {n} in {status}"))?;
        }
    }
    by_reason.retain(|_, n| *n > 0);
    let mut counters = json!(sums);
    counters["rejected_by_reason"] = json!(by_reason);
    Ok(counters)
}

/// Polls until the status counters summed over `hosts` equal the whole stream's.
fn wait_for_exact_counters(names: &str, hosts: &[&Weft], want: &Expected) {
    wait_for(
        &format!("the status counters summed over {names} to equal the reference"),
        DEADLINE,
        || {
            let got = summed_counters(hosts)?;
            if got == want.counters {
                Ok(Some(()))
            } else {
                Err(format!("summed {got}; want {}", want.counters))
            }
        },
    );
}

/// The partition of each line of `log` that says `what`, in order: its
/// `partition=P` field.
fn logged(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains(what))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("partition=")?.parse().ok())
        })
        .collect()
}

/// How often `p` occurs in `list`.
fn occurrences(list: &[u64], p: u64) -> usize {
    list.iter().filter(|&&q| q == p).count()
}

/// Partitions move in every way a group moves them, mid-stream: B joins and
/// takes partitions from A, C joins, B is killed with SIGKILL (its
/// partitions are reported missing with a 503, then taken over from its last
/// state in the changelog and re-read from the offset recorded with it), D
/// joins with an empty data directory, C leaves cleanly. The survivors A and
/// D each answer for the whole group exactly as the reference does, their
/// counters sum to the whole stream's, each partition B or C held was
/// restored from the changelog on its new owner, and both see the same
/// group.
#[test]
fn three_hosts_with_a_kill_a_join_and_a_leave_stay_exact() {
    let stream = generate(23, 600, LATENESS_MS);
    let want = expected(&stream);
    let topic = create_topic(8);
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config(dir.path());
    let group_name = format!("{topic}-group");
    let args = kafka_args(&topic, &group_name, &brokers, Some(&config));
    let start = |name: &str| Weft::start(&dir.path().join(name), &args);
    // A third of the stream is there at the start, the next third comes
    // after B is killed, the rest after C has left: every change falls
    // before the end of the stream, however fast the hosts read.
    let n = stream.deliveries.len();
    let (first, second) = (stream.in_order_cut(n / 3), stream.in_order_cut(2 * n / 3));

    produce(&topic, &stream.deliveries[..first]);
    let a = start("a");
    let b = start("b");
    let c = start("c");
    let owned = settled("A, B and C to share the partitions", &[&a, &b, &c], 8);
    let b_owned = owned[1].clone();
    wait_for("B to read", DEADLINE, || {
        Ok((received(&b)? > 0).then_some(()))
    });
    b.kill();

    // Until the group notices, B's partitions have no owner that answers.
    let missing = wait_for(
        "A to answer 503 for B's partitions",
        Duration::from_secs(60),
        || {
            let (code, body) = ask(&a, "/api/plugins/core/query")?;
            if code != 503 {
                return Err(format!("{code}: {body}"));
            }
            let error = body["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty(), "an error message in {body}");
            numbers(&body, "missing").map(Some)
        },
    );
    // Others may be moving at that moment too (the group may be mid-rebalance).
    assert!(
        b_owned.iter().all(|p| missing.contains(p)),
        "missing {missing:?}, B owned {b_owned:?}; A sees {}",
        a.get("/api/status")["group"]
    );

    produce(&topic, &stream.deliveries[first..second]);
    let d = start("d");
    let owned = settled("A, C and D to share the partitions", &[&a, &c, &d], 8);
    let c_owned = owned[1].clone();
    let status = c.terminate(STOP_WITHIN);
    assert!(status.success(), "C stops cleanly: {status}");
    produce(&topic, &stream.deliveries[second..]);

    let d_owned = settled("A and D to share the partitions", &[&a, &d], 8)[1].clone();
    for (host, name) in [(&a, "A"), (&d, "D")] {
        wait_for_exact_answers(host, name, &want);
    }
    wait_for_exact_counters("A and D", &[&a, &d], &want);
    for host in [&a, &d] {
        wait_for_members(host, &[&a, &d], &group_name, 8);
    }

    let (a_log, d_log) = (a.log(), d.log());
    let restored = [logged(&a_log, RESTORED), logged(&d_log, RESTORED)].concat();
    for p in b_owned.iter().chain(&c_owned) {
        assert!(
            restored.contains(p),
            "partition {p} (B had {b_owned:?}, C had {c_owned:?}) restored from the changelog:\nA:\n{a_log}\nD:\n{d_log}"
        );
    }
    // D started empty: all it owns was written by others.
    let d_restored = logged(&d_log, RESTORED);
    for p in &d_owned {
        assert!(d_restored.contains(p), "D restored partition {p}:\n{d_log}");
    }
    let count = group(&d).expect("D's group")["restored"].as_u64();
    assert!(
        count >= Some(d_owned.len() as u64),
        "D counts its restores: {count:?}, owns {d_owned:?}"
    );
}

/// A partition moving back and forth does not drift: B joins, leaves
/// cleanly and rejoins on the same data directory (its local state stale by
/// then) while the stream arrives in slices, so partitions go from A to B and
/// back at least five times, each time restored from the changelog. A and B
/// together, and then A alone, answer exactly as the reference does with
/// counters summing to the whole stream's; A logs every move, and hands a
/// partition over only when B takes it (the assignment is cooperative).
#[test]
fn a_partition_bouncing_between_two_hosts_stays_exact() {
    let stream = generate(29, 480, LATENESS_MS);
    let want = expected(&stream);
    let topic = create_topic(4);
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config(dir.path());
    let group_name = format!("{topic}-group");
    let args = kafka_args(&topic, &group_name, &brokers, Some(&config));
    let n = stream.deliveries.len();
    // Each slice ends where the stream is in order (see `in_order_cut`).
    let cuts: Vec<usize> = (0..=6).map(|i| stream.in_order_cut(n * i / 6)).collect();
    let slice = |i: usize| &stream.deliveries[cuts[i]..cuts[i + 1]];

    produce(&topic, slice(0));
    let a = Weft::start(&dir.path().join("a"), &args);
    settled("A to own every partition", &[&a], 4);
    wait_for("A to read", DEADLINE, || {
        Ok((received(&a)? > 0).then_some(()))
    });

    let b_data = dir.path().join("b");
    // B with what it owns, while it runs.
    let mut b: Option<(Weft, Vec<u64>)> = None;
    // One entry per move, the partition moved.
    let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
    for i in 1..6 {
        match b.take() {
            None => {
                // B joins and takes partitions from A, restoring what A
                // wrote: its own data directory is empty or stale.
                let host = Weft::start(&b_data, &args);
                let owned = settled("A and B to share the partitions", &[&a, &host], 4)[1].clone();
                wait_for("B to count its restores", DEADLINE, || {
                    let group = group(&host)?;
                    if group["restored"].as_u64() >= Some(owned.len() as u64) {
                        Ok(Some(()))
                    } else {
                        Err(group.to_string())
                    }
                });
                to_b.extend(&owned);
                let before = received(&host).unwrap_or_else(|e| panic!("B's status: {e}"));
                produce(&topic, slice(i));
                wait_for("B to read into the new slice", DEADLINE, || {
                    Ok((received(&host)? > before).then_some(()))
                });
                b = Some((host, owned));
            }
            Some((host, owned)) => {
                // B leaves in the middle of a slice; A takes everything back.
                produce(&topic, slice(i));
                let status = host.terminate(STOP_WITHIN);
                assert!(status.success(), "B stops cleanly: {status}");
                settled("A to own every partition again", &[&a], 4);
                to_a.extend(owned);
            }
        }
    }

    let (b, b_owned) = b.expect("B runs at the end");
    for (host, name) in [(&a, "A"), (&b, "B")] {
        wait_for_exact_answers(host, name, &want);
    }
    wait_for_exact_counters("A and B", &[&a, &b], &want);

    // B leaves for the last time: A alone holds the whole group's state.
    let status = b.terminate(STOP_WITHIN);
    assert!(status.success(), "B stops cleanly: {status}");
    to_a.extend(b_owned);
    settled("A to own every partition at the end", &[&a], 4);
    wait_for_exact_answers(&a, "A alone", &want);
    wait_for_exact_counters("A alone", &[&a], &want);

    assert!(
        to_b.len() + to_a.len() >= 5,
        "moves A to B {to_b:?}, B to A {to_a:?}"
    );
    let log = a.log();
    let (handed, restored) = (logged(&log, HANDED_OVER), logged(&log, RESTORED));
    for p in 0..4 {
        // Cooperative-sticky: A gives up a partition only when B takes it.
        assert_eq!(
            occurrences(&handed, p),
            occurrences(&to_b, p),
            "A hands partition {p} over exactly when B takes it ({to_b:?}):\n{log}"
        );
        assert!(
            occurrences(&restored, p) >= occurrences(&to_a, p),
            "A logs restoring partition {p} each time it came back ({to_a:?}):\n{log}"
        );
    }
    let count = group(&a).expect("A's group")["restored"].as_u64();
    assert!(
        count >= Some(to_a.len() as u64),
        "A counts its restores: {count:?}, took back {to_a:?}"
    );
}

/// Polls until `host` has checkpointed everything it read: every
/// partition's last checkpoint is at its offsets, nothing buffered.
fn wait_for_all_checkpointed(host: &Weft, name: &str) {
    wait_for(
        &format!("{name} to checkpoint all it read"),
        DEADLINE,
        || {
            let status = host.try_get("/api/status")?;
            let partitions = status["partitions"]
                .as_array()
                .ok_or_else(|| format!("no partitions in {status}"))?;
            let done = partitions.iter().all(|p| {
                p["buffered"] == json!(0) && p["last_checkpoint"]["offsets"] == p["offsets"]
            });
            if done && !partitions.is_empty() {
                Ok(Some(()))
            } else {
                Err(status["partitions"].to_string())
            }
        },
    );
}

/// A host that stalls past its session keeps what it read unsaved while
/// the group gives its partitions to another host; when it wakes, its late
/// checkpoint of them lands in the changelog after the new owner's claim,
/// and must not count. B (checkpointing only when a partition leaves it) is
/// stopped with SIGSTOP holding unsaved events; A takes everything, reads
/// the rest of the stream, checkpoints it all and is killed with SIGKILL;
/// B is woken with SIGCONT, writes its stale checkpoint last, finds A's
/// claim as that write settles, logs that it was fenced, and then takes
/// every partition from the changelog. Had its stale write counted, B
/// would restore A's later state with its own earlier metadata mixed in
/// and count the last slice twice; B's answers equal the reference.
#[test]
fn a_host_that_stalls_past_its_session_is_fenced_and_counts_nothing_twice() {
    let stream = generate(31, 400, LATENESS_MS);
    let want = expected(&stream);
    let topic = create_topic(4);
    let brokers = brokers();
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = write_config(dir.path());
    let lazy = write_config_as(dir.path(), "lazy.toml", 600_000);
    let group_name = format!("{topic}-group");
    let n = stream.deliveries.len();
    let cuts: Vec<usize> = (0..=3).map(|i| stream.in_order_cut(n * i / 3)).collect();
    let slice = |i: usize| &stream.deliveries[cuts[i]..cuts[i + 1]];
    let start = |name: &str, config: &str| {
        let args = kafka_args(&topic, &group_name, &brokers, Some(config));
        Weft::start(&dir.path().join(name), &args)
    };

    produce(&topic, slice(0));
    let a = start("a", &config);
    settled("A to own every partition", &[&a], 4);
    let b = start("b", &lazy);
    settled("A and B to share the partitions", &[&a, &b], 4);
    let before = received(&b).unwrap_or_else(|e| panic!("B's status: {e}"));
    produce(&topic, slice(1));
    wait_for("B to read into the second slice", DEADLINE, || {
        Ok((received(&b)? > before).then_some(()))
    });

    b.signal("STOP");
    settled("A to own every partition while B is stalled", &[&a], 4);
    produce(&topic, slice(2));
    wait_for_exact_counters("A", &[&a], &want);
    wait_for_all_checkpointed(&a, "A");
    a.kill();
    b.signal("CONT");
    wait_for("B to find it was fenced", DEADLINE, || {
        Ok(b.log().contains(FENCED).then_some(()))
    });

    settled("B to own every partition", &[&b], 4);
    wait_for_exact_answers(&b, "B", &want);
    wait_for_exact_counters("B", &[&b], &want);
}
