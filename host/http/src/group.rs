//! A query over a whole consumer group: this host's partitions answer
//! here, the others' owners (as the members topic names them) over HTTP,
//! and the metric's `merge` combines every partition's answer. A partition
//! no host answers for is missing, and said so: never a silently partial
//! number.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;
use weft_pipeline::{QueryError, Shared};
use weft_state::Part;

/// How long a query waits for another host.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP client for every query's fan-out: it keeps connections to the
/// other hosts open between queries.
static PEERS: LazyLock<ureq::Agent> =
    LazyLock::new(|| ureq::AgentBuilder::new().timeout(PEER_TIMEOUT).build());

pub(crate) enum Answer {
    /// The metric's answer over every partition.
    Whole(String),
    /// Asked with `partial=true`: `{"partial", "missing", "answer"}`.
    Partial(Value),
    /// These partitions' owners did not answer.
    Missing(Vec<Part>),
}

/// Metric `name`'s answer over every partition of the group (or of this
/// host, when it is in none).
pub(crate) fn query(
    shared: &Shared,
    name: &str,
    mut params: Vec<(String, String)>,
) -> Result<Answer, QueryError> {
    let partial = params.iter().any(|(k, v)| k == "partial" && v == "true");
    params.retain(|(k, _)| k != "partial");
    let Some(owners) = shared.owners() else {
        return shared.query(name, &params).map(Answer::Whole);
    };
    // The other owners are asked while this host's partitions answer: a
    // query waits for the slowest of them, not for their sum.
    let here = shared.part_ids();
    let asked: Vec<&str> = owners
        .others
        .iter()
        .filter(|(_, parts)| {
            parts
                .iter()
                .any(|p| owners.all.contains(p) && !here.contains(p))
        })
        .map(|(url, _)| url.as_str())
        .collect();
    let (local, replies) = std::thread::scope(|scope| {
        let asking: Vec<_> = asked
            .iter()
            .map(|url| scope.spawn(|| ask(url, name, &params)))
            .collect();
        let local = shared.partials(name, &params);
        let replies: Vec<Result<Vec<(Part, String)>, String>> = asking
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the request panicked".into()))
            })
            .collect();
        (local, replies)
    });
    let mut answers: BTreeMap<Part, String> = local?.into_iter().collect();
    for (url, reply) in asked.iter().zip(replies) {
        match reply {
            Ok(partials) => {
                for (part, answer) in partials {
                    answers.entry(part).or_insert(answer);
                }
            }
            Err(e) => {
                tracing::warn!(peer = url, error = %e, "A host of the group did not answer a query.")
            }
        }
    }
    let missing: Vec<Part> = owners
        .all
        .iter()
        .filter(|p| !answers.contains_key(p))
        .copied()
        .collect();
    if !missing.is_empty() && !partial {
        return Ok(Answer::Missing(missing));
    }
    let partials: Vec<String> = answers.into_values().collect();
    let merged = shared.merge(name, &params, &partials)?;
    if !partial {
        return Ok(Answer::Whole(merged));
    }
    let answer: Value = serde_json::from_str(&merged).unwrap_or(Value::String(merged));
    Ok(Answer::Partial(serde_json::json!({
        "partial": !missing.is_empty(),
        "missing": missing,
        "answer": answer,
    })))
}

/// Another host's partitions' own answers.
fn ask(url: &str, name: &str, params: &[(String, String)]) -> Result<Vec<(Part, String)>, String> {
    let mut request = PEERS.get(&format!("{url}/api/internal/partials/{name}"));
    for (k, v) in params {
        request = request.query(k, v);
    }
    let body: Value = request
        .call()
        .map_err(|e| e.to_string())?
        .into_json()
        .map_err(|e| e.to_string())?;
    let partials = body["partials"]
        .as_array()
        .ok_or("no partials in the answer")?;
    partials
        .iter()
        .map(|p| {
            let part = p["partition"]
                .as_u64()
                .ok_or("a partial without its partition")?;
            Ok((part as Part, p["answer"].to_string()))
        })
        .collect()
}
