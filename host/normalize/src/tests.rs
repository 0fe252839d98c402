//! Unit tests: the five built-in input shapes, time forms, rejections, field mapping,
//! user-agent enrichment, props flattening and a no-panic check over random input.

use serde_json::{Value, json};

use super::*;

const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) \
     AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// 2023-11-14T22:13:20Z
const T_S: i64 = 1_700_000_000;
const T_MS: i64 = T_S * 1000;

fn normalize(input: &str) -> Result<Event, Rejection> {
    Normalizer::new(FieldMapping::default()).normalize(input.as_bytes())
}

fn ok(input: Value) -> Event {
    match normalize(&input.to_string()) {
        Ok(event) => event,
        Err(r) => panic!("rejected {input}: {r}"),
    }
}

fn rejected(input: &[u8]) -> Rejection {
    match Normalizer::new(FieldMapping::default()).normalize(input) {
        Ok(event) => panic!("accepted {}: {event:?}", String::from_utf8_lossy(input)),
        Err(r) => r,
    }
}

fn reason(input: &str) -> Reason {
    rejected(input.as_bytes()).reason
}

fn time_of(ts: Value) -> Result<i64, Rejection> {
    normalize(&json!({"user_id": "u", "event": "e", "ts": ts}).to_string()).map(|e| e.time)
}

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn event(user: &str, name: &str, time: i64) -> Event {
    Event {
        id: String::new(),
        time,
        user: user.into(),
        name: name.into(),
        session: String::new(),
        path: String::new(),
        device: String::new(),
        browser: String::new(),
        os: String::new(),
        props: Vec::new(),
    }
}

// --- the five built-in shapes -------------------------------------------------------------

#[test]
fn shape_1_full_tracker_event() {
    let got = ok(json!({
        "event_id": "e-1",
        "ts": 1_700_000_000_123_i64,
        "user_id": "u1",
        "event": "page_view",
        "path": "/home",
        "platform": "web",
        "user_agent": CHROME_WINDOWS,
        "ip": "203.0.113.9",
        "session_id": "s-1",
        "properties": {"referrer": "https://example.com/", "plan": "pro", "count": 3}
    }));
    let want = Event {
        id: "e-1".into(),
        time: 1_700_000_000_123,
        user: "u1".into(),
        name: "page_view".into(),
        session: "s-1".into(),
        path: "/home".into(),
        device: "web".into(),
        browser: "Chrome".into(),
        os: "Windows 10".into(),
        props: props(&[
            ("count", "3"),
            ("ip", "203.0.113.9"),
            ("plan", "pro"),
            ("referrer", "https://example.com/"),
        ]),
    };
    assert_eq!(got, want);
}

#[test]
fn shape_1_rfc3339_ts() {
    let got = ok(json!({"user_id": "u1", "event": "x", "ts": "2023-11-14T22:13:20.5Z"}));
    assert_eq!(got.time, T_MS + 500);
}

#[test]
fn shape_2_properties_page() {
    let got = ok(json!({
        "event": "signup",
        "timestamp": 1_700_000_000_123_i64,
        "user_id": "u2",
        "properties": {"page": "/signup", "plan": "free"}
    }));
    let want = Event {
        path: "/signup".into(),
        props: props(&[("plan", "free")]),
        ..event("u2", "signup", 1_700_000_000_123)
    };
    assert_eq!(got, want);
}

#[test]
fn shape_3_numeric_user_and_seconds() {
    let got = ok(json!({
        "user_id": 42,
        "path": "/cart",
        "action": "add_to_cart",
        "timestamp": T_S,
        "ip": "198.51.100.7"
    }));
    let want = Event {
        path: "/cart".into(),
        props: props(&[("ip", "198.51.100.7")]),
        ..event("42", "add_to_cart", T_MS)
    };
    assert_eq!(got, want);
}

#[test]
fn shape_4_naive_time_with_millis() {
    let got = ok(json!({
        "event_timestamp": "2024-03-01 12:34:56.789",
        "user": "alice",
        "page": "/pricing",
        "event": "click"
    }));
    let want = Event {
        path: "/pricing".into(),
        ..event("alice", "click", 1_709_296_496_789)
    };
    assert_eq!(got, want);
}

#[test]
fn shape_5_person_code_and_event_platform() {
    let got = ok(json!({
        "person_code": "P-001",
        "session_id": "sess-9",
        "event_time": "2024-03-01T12:34:56+02:00",
        "event_platform": "ios",
        "event_type": "purchase",
        "event_id": "e-5",
        "amount": 19.99,
        "items": ["a", "b"],
        "meta": {"k": 1},
        "flag": true,
        "nothing": null
    }));
    let want = Event {
        id: "e-5".into(),
        session: "sess-9".into(),
        device: "ios".into(),
        props: props(&[
            ("amount", "19.99"),
            ("flag", "true"),
            ("items", r#"["a","b"]"#),
            ("meta", r#"{"k":1}"#),
        ]),
        ..event("P-001", "purchase", 1_709_289_296_000)
    };
    assert_eq!(got, want);
}

#[test]
fn shape_5_event_name_candidates() {
    let base = json!({"person_code": "p", "event_time": T_MS});
    for key in ["event", "action", "event_type", "event_name"] {
        let mut input = base.clone();
        input[key] = json!("go");
        assert_eq!(ok(input).name, "go", "{key}");
    }
    // Earlier candidates win; later ones stay in the props.
    let got = ok(json!({"person_code": "p", "event_time": T_MS, "action": "a", "event_name": "b"}));
    assert_eq!(got.name, "a");
    assert_eq!(got.props, props(&[("event_name", "b")]));
}

// --- time ---------------------------------------------------------------------------------

#[test]
fn rfc3339_with_offset() {
    assert_eq!(time_of(json!("2023-11-15T00:13:20+02:00")), Ok(T_MS));
    assert_eq!(
        time_of(json!("2023-11-14T17:13:20.250-05:00")),
        Ok(T_MS + 250)
    );
    assert_eq!(time_of(json!("2023-11-14T22:13:20Z")), Ok(T_MS));
}

#[test]
fn naive_times_read_as_utc() {
    assert_eq!(time_of(json!("2023-11-14 22:13:20")), Ok(T_MS));
    assert_eq!(time_of(json!("2023-11-14T22:13:20")), Ok(T_MS));
    assert_eq!(time_of(json!("2023-11-14 22:13:20.042")), Ok(T_MS + 42));
    assert_eq!(time_of(json!("2023-11-14T22:13:20.9999")), Ok(T_MS + 999));
}

#[test]
fn seconds_below_1e11_else_millis() {
    assert_eq!(time_of(json!(T_S)), Ok(T_MS));
    assert_eq!(time_of(json!(T_MS)), Ok(T_MS));
    assert_eq!(time_of(json!(99_999_999_999_i64)), Ok(99_999_999_999_000));
    assert_eq!(time_of(json!(100_000_000_000_i64)), Ok(100_000_000_000));
    assert_eq!(time_of(json!(0)), Ok(0));
    // Digit strings follow the same rule.
    assert_eq!(time_of(json!("1700000000")), Ok(T_MS));
    assert_eq!(time_of(json!("1700000000000")), Ok(T_MS));
    // Floats too, rounded down to the millisecond.
    assert_eq!(time_of(json!(1_700_000_000.123_f64)), Ok(T_MS + 123));
    assert_eq!(time_of(json!(1_700_000_000.123_9_f64)), Ok(T_MS + 123));
    assert_eq!(time_of(json!(1_700_000_000_123.9_f64)), Ok(T_MS + 123));
    assert_eq!(time_of(json!("1700000000.5")), Ok(T_MS + 500));
}

#[test]
fn bad_times() {
    for bad in [
        json!("yesterday"),
        json!(""),
        json!(true),
        json!([]),
        json!({"t": 1}),
        json!("2023-13-01 00:00:00"),
        json!("2023-11-14"),
        json!("-1700000000"),
        json!("1700000000."),
        json!(1e30),
        json!(-1e30),
        json!(u64::MAX),
        json!("99999999999999999999999999999999999999999999"),
        json!(i64::MAX),
    ] {
        let r = time_of(bad.clone()).expect_err(&bad.to_string());
        assert_eq!(r.reason, Reason::BadTime, "{bad}: {}", r.detail);
    }
}

#[test]
fn bad_time_detail_names_field_and_value() {
    let r = time_of(json!("yesterday")).unwrap_err();
    assert_eq!(
        r.detail,
        r#"field `ts`: "yesterday" is not epoch ms, epoch s or RFC 3339"#
    );
    assert_eq!(r.to_string(), format!("bad_time: {}", r.detail));
    let r = time_of(json!(u64::MAX)).unwrap_err();
    assert_eq!(r.detail, "field `ts`: 18446744073709551615 is out of range");
}

#[test]
fn time_candidates_in_order() {
    for key in ["ts", "timestamp", "event_timestamp", "event_time", "time"] {
        let mut input = json!({"user_id": "u", "event": "e"});
        input[key] = json!(T_S);
        assert_eq!(ok(input).time, T_MS, "{key}");
    }
    // A null candidate is skipped; the first non-null one decides even if it is bad.
    let got = ok(json!({"user_id": "u", "event": "e", "ts": null, "time": T_S}));
    assert_eq!(got.time, T_MS);
    let r = normalize(r#"{"user_id":"u","event":"e","ts":"bad","time":1700000000}"#);
    assert_eq!(r.unwrap_err().reason, Reason::BadTime);
}

// --- rejections ---------------------------------------------------------------------------

#[test]
fn reason_codes() {
    let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [
            "not_json",
            "not_object",
            "missing_user",
            "missing_event",
            "missing_time",
            "bad_time"
        ]
    );
    assert_eq!(Reason::BadTime.to_string(), "bad_time");
}

#[test]
fn not_json() {
    for input in [
        &b""[..],
        b"   ",
        b"{",
        b"{\"user_id\":\"u\",\"event\":",
        b"{\"user_id\":\"u\"} trailing",
        b"\xff\xfe\x00",
        b"{\"user_id\":\"\xff\",\"event\":\"e\",\"ts\":1}",
        b"{'user_id': 'u'}",
        b"NaN",
    ] {
        let r = rejected(input);
        assert_eq!(r.reason, Reason::NotJson, "{input:?}");
        assert!(!r.detail.is_empty());
    }
    // The detail is serde_json's message, clipped.
    let long = format!("{{\"{}", "x".repeat(1000));
    let r = rejected(long.as_bytes());
    assert!(r.detail.len() <= MAX_DETAIL_VALUE + 3, "{}", r.detail);
}

#[test]
fn not_object() {
    for input in [
        "[]",
        "[{\"user_id\":\"u\"}]",
        "\"str\"",
        "1",
        "null",
        "true",
    ] {
        assert_eq!(reason(input), Reason::NotObject, "{input}");
    }
    assert_eq!(
        rejected(b"[1]").detail,
        "expected a JSON object, got an array"
    );
}

#[test]
fn missing_user() {
    for input in [
        r#"{"event":"e","ts":1}"#,
        r#"{"user_id":"","event":"e","ts":1}"#,
        r#"{"user_id":null,"event":"e","ts":1}"#,
        r#"{"user_id":["u"],"event":"e","ts":1}"#,
        r#"{"user_id":{"id":"u"},"event":"e","ts":1}"#,
        r#"{"user_id":1.5,"event":"e","ts":1}"#,
        r#"{"user_id":true,"event":"e","ts":1}"#,
        r#"{}"#,
        // The first non-null candidate decides: an empty one is not skipped over.
        r#"{"user_id":"","user":"bob","event":"e","ts":1}"#,
    ] {
        assert_eq!(reason(input), Reason::MissingUser, "{input}");
    }
    assert_eq!(
        rejected(b"{}").detail,
        "no user field (tried `user_id`, `user`, `person_code`, `distinct_id`)"
    );
    assert_eq!(
        rejected(br#"{"user":[1]}"#).detail,
        "field `user`: expected a string or an integer, got [1]"
    );
    // A null candidate is skipped over.
    let got = ok(json!({"user_id": null, "distinct_id": "d", "event": "e", "ts": 1}));
    assert_eq!(got.user, "d");
}

#[test]
fn numeric_user_ids() {
    let got = ok(json!({"user_id": u64::MAX, "event": "e", "ts": 1}));
    assert_eq!(got.user, "18446744073709551615");
    let got = ok(json!({"user_id": -7, "event": "e", "ts": 1}));
    assert_eq!(got.user, "-7");
}

#[test]
fn missing_event() {
    for input in [
        r#"{"user_id":"u","ts":1}"#,
        r#"{"user_id":"u","event":"","ts":1}"#,
        r#"{"user_id":"u","event":null,"ts":1}"#,
        r#"{"user_id":"u","event":5,"ts":1}"#,
        r#"{"user_id":"u","event":["e"],"ts":1}"#,
    ] {
        assert_eq!(reason(input), Reason::MissingEvent, "{input}");
    }
    assert_eq!(
        rejected(br#"{"user_id":"u","action":""}"#).detail,
        "field `action` is empty"
    );
}

#[test]
fn missing_time() {
    let r = rejected(br#"{"user_id":"u","event":"e","ts":null}"#);
    assert_eq!(r.reason, Reason::MissingTime);
    assert_eq!(
        r.detail,
        "no time field (tried `ts`, `timestamp`, `event_timestamp`, `event_time`, `time`)"
    );
}

#[test]
fn reasons_checked_in_order() {
    assert_eq!(reason(r#"{"ts":"bad"}"#), Reason::MissingUser);
    assert_eq!(
        reason(r#"{"user_id":"u","ts":"bad"}"#),
        Reason::MissingEvent
    );
    assert_eq!(
        reason(r#"{"user_id":"u","event":"e"}"#),
        Reason::MissingTime
    );
    assert_eq!(
        reason(r#"{"user_id":"u","event":"e","ts":"bad"}"#),
        Reason::BadTime
    );
}

// --- field mapping ------------------------------------------------------------------------

fn mapping(config: Value) -> FieldMapping {
    serde_json::from_value(config).expect("valid mapping")
}

#[test]
fn mapping_for_custom_shape() {
    let mut n = Normalizer::new(mapping(json!({
        "user": "uid", "event": "type", "time": "meta.t", "time_format": "s"
    })));
    let got = n
        .normalize(br#"{"uid":7,"type":"click","meta":{"t":"1700000000"}}"#)
        .unwrap();
    // `meta` is left empty by consuming `meta.t`, so it disappears from the props.
    assert_eq!(got, event("7", "click", T_MS));

    let got = n
        .normalize(br#"{"uid":"a","type":"b","meta":{"t":1700000000,"src":"x"},"user_id":"z"}"#)
        .unwrap();
    assert_eq!(got.user, "a");
    // The mapping replaces the candidates: `user_id` is just a leftover property now.
    assert_eq!(
        got.props,
        props(&[("meta", r#"{"src":"x"}"#), ("user_id", "z")])
    );
}

#[test]
fn mapping_paths_for_every_field() {
    let mut n = Normalizer::new(mapping(json!({
        "id": "m.id", "time": "m.when", "user": "m.who", "event": "m.what",
        "session": "m.s", "path": "m.url", "device": "m.dev", "user_agent": "m.ua"
    })));
    let got = n
        .normalize(
            json!({"m": {
                "id": "i", "when": "2023-11-14T22:13:20Z", "who": "w", "what": "x",
                "s": "s", "url": "/u", "dev": "tv", "ua": CHROME_WINDOWS
            }})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
    let want = Event {
        id: "i".into(),
        session: "s".into(),
        path: "/u".into(),
        device: "tv".into(),
        browser: "Chrome".into(),
        os: "Windows 10".into(),
        ..event("w", "x", T_MS)
    };
    assert_eq!(got, want);
    let r = n.normalize(br#"{"m":{"who":"w","what":"x"}}"#).unwrap_err();
    assert_eq!(r.detail, "no time field (tried `m.when`)");
}

#[test]
fn time_format_forces_unit() {
    let with = |format: &str, ts: Value| {
        let mut n = Normalizer::new(mapping(json!({"time_format": format})));
        n.normalize(
            json!({"user_id": "u", "event": "e", "ts": ts})
                .to_string()
                .as_bytes(),
        )
        .map(|e| e.time)
    };
    assert_eq!(with("ms", json!(T_S)), Ok(T_S));
    assert_eq!(with("ms", json!("1700000000")), Ok(T_S));
    assert_eq!(with("s", json!(T_MS)), Ok(T_MS * 1000)); // year 55 000, but representable
    let r = with("s", json!(T_MS * 1_000_000)).unwrap_err();
    assert_eq!(r.detail, "field `ts`: 1700000000000000000 is out of range");
    assert_eq!(with("s", json!(1.5)), Ok(1500));
    assert_eq!(with("rfc3339", json!("2023-11-14T22:13:20Z")), Ok(T_MS));
    let r = with("rfc3339", json!(T_MS)).unwrap_err();
    assert_eq!(r.detail, "field `ts`: 1700000000000 is not RFC 3339");
    let r = with("s", json!("2023-11-14T22:13:20Z")).unwrap_err();
    assert_eq!(
        r.detail,
        r#"field `ts`: "2023-11-14T22:13:20Z" is not epoch s"#
    );
    assert_eq!(with("auto", json!(T_S)), Ok(T_MS));
}

#[test]
fn mapping_rejects_unknown_keys_and_formats() {
    assert!(serde_json::from_value::<FieldMapping>(json!({"usr": "x"})).is_err());
    assert!(serde_json::from_value::<FieldMapping>(json!({"time_format": "ns"})).is_err());
    let m = mapping(json!({"time_format": "rfc3339"}));
    assert_eq!(m.time_format, Some(TimeFormat::Rfc3339));
}

// --- enrichment ---------------------------------------------------------------------------

fn with_agent(extra: Value) -> Event {
    let mut input = json!({"user_id": "u", "event": "e", "ts": T_MS});
    if let (Value::Object(input), Value::Object(extra)) = (&mut input, extra) {
        input.extend(extra);
    }
    ok(input)
}

#[test]
fn desktop_chrome() {
    let got = with_agent(json!({"user_agent": CHROME_WINDOWS}));
    assert_eq!(
        (got.browser.as_str(), got.os.as_str(), got.device.as_str()),
        ("Chrome", "Windows 10", "desktop")
    );
}

#[test]
fn iphone_safari() {
    let got = with_agent(json!({"properties": {"user_agent": SAFARI_IPHONE}}));
    assert_eq!(
        (got.browser.as_str(), got.os.as_str(), got.device.as_str()),
        ("Safari", "iPhone", "mobile")
    );
    assert!(got.props.is_empty());
}

#[test]
fn bot() {
    let got = with_agent(json!({"user_agent": GOOGLEBOT}));
    assert_eq!(
        (got.browser.as_str(), got.os.as_str(), got.device.as_str()),
        ("Googlebot", "", "bot")
    );
}

#[test]
fn unknown_or_missing_agent() {
    let got = with_agent(json!({"user_agent": "curl-ish/0.0 something"}));
    assert_eq!((got.browser.as_str(), got.os.as_str()), ("", ""));
    let got = with_agent(json!({}));
    assert_eq!(
        (got.browser, got.os, got.device),
        (String::new(), String::new(), String::new())
    );
    // A non-string user agent is not used and stays in the props.
    let got = with_agent(json!({"user_agent": {"raw": "x"}}));
    assert_eq!(got.browser, "");
    assert_eq!(got.props, props(&[("user_agent", r#"{"raw":"x"}"#)]));
}

#[test]
fn explicit_device_beats_user_agent() {
    for key in ["platform", "device", "event_platform"] {
        let mut extra = json!({"user_agent": SAFARI_IPHONE});
        extra[key] = json!("kiosk");
        let got = with_agent(extra);
        assert_eq!(got.device, "kiosk", "{key}");
        // Browser and OS still come from the user agent.
        assert_eq!(got.browser, "Safari");
    }
    let got = with_agent(json!({"properties": {"device": "tablet"}, "user_agent": CHROME_WINDOWS}));
    assert_eq!(got.device, "tablet");
    // An empty explicit device falls back to the user agent.
    let got = with_agent(json!({"platform": "", "user_agent": CHROME_WINDOWS}));
    assert_eq!(got.device, "desktop");
}

#[test]
fn agent_cache_is_bounded() {
    let mut n = Normalizer::new(FieldMapping::default());
    for i in 0..(agent::CACHE_CAPACITY + 10) {
        let ua = format!("{CHROME_WINDOWS} build/{i}");
        let input = json!({"user_id": "u", "event": "e", "ts": 1, "user_agent": ua});
        let got = n.normalize(input.to_string().as_bytes()).unwrap();
        assert_eq!(got.browser, "Chrome");
        assert!(n.agents.cache.len() <= agent::CACHE_CAPACITY);
    }
    // Very long agents are cut before parsing and caching.
    let ua = format!("{CHROME_WINDOWS} {}", "é".repeat(10_000));
    let input = json!({"user_id": "u", "event": "e", "ts": 1, "user_agent": ua});
    let got = n.normalize(input.to_string().as_bytes()).unwrap();
    assert_eq!(got.browser, "Chrome");
    assert!(n.agents.cache.keys().all(|k| k.len() <= 512));
}

// --- props --------------------------------------------------------------------------------

#[test]
fn props_flattening() {
    let got = ok(json!({
        "user_id": "u", "event": "e", "ts": 1,
        "zeta": "last",
        "ip": "10.0.0.1",
        "referrer": "https://r.example/",
        "n": -1.25,
        "big": 12345678901234567890_u64,
        "ok": false,
        "skip": null,
        "list": [1, {"a": null}],
        "obj": {"b": [true]},
        "properties": {
            "page": "/p",
            "ip": "shadowed by the top-level ip",
            "campaign": "spring",
            "nested": {"x": 1},
            "gone": null
        }
    }));
    assert_eq!(got.path, "/p");
    assert_eq!(
        got.props,
        props(&[
            ("big", "12345678901234567890"),
            ("campaign", "spring"),
            ("ip", "10.0.0.1"),
            ("list", r#"[1,{"a":null}]"#),
            ("n", "-1.25"),
            ("nested", r#"{"x":1}"#),
            ("obj", r#"{"b":[true]}"#),
            ("ok", "false"),
            ("referrer", "https://r.example/"),
            ("zeta", "last"),
        ])
    );
}

#[test]
fn non_object_properties_is_a_plain_prop() {
    let got = ok(json!({"user_id": "u", "event": "e", "ts": 1, "properties": "raw"}));
    assert_eq!(got.props, props(&[("properties", "raw")]));
}

#[test]
fn optional_fields_take_strings_and_numbers() {
    let got = ok(json!({
        "user_id": "u", "event": "e", "ts": 1,
        "event_id": 99, "session_id": 12, "path": false
    }));
    assert_eq!(
        (got.id.as_str(), got.session.as_str(), got.path.as_str()),
        ("99", "12", "")
    );
    // An unusable path is left as a property.
    assert_eq!(got.props, props(&[("path", "false")]));
}

#[test]
fn event_serde_round_trip() {
    let got = ok(json!({"user_id": "u", "event": "e", "ts": 1, "ip": "x"}));
    let text = serde_json::to_string(&got).unwrap();
    assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), got);
}

// --- never panics -------------------------------------------------------------------------

/// xorshift64*: a tiny deterministic generator, good enough for input fuzzing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "event_id",
    "ts",
    "timestamp",
    "event_timestamp",
    "event_time",
    "time",
    "user_id",
    "user",
    "person_code",
    "distinct_id",
    "event",
    "action",
    "event_type",
    "event_name",
    "session_id",
    "path",
    "page",
    "platform",
    "device",
    "event_platform",
    "user_agent",
    "properties",
    "ip",
    "meta",
    "",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let strings = [
        "",
        "x",
        "1700000000",
        "1700000000.5",
        "2023-11-14T22:13:20Z",
        "2023-11-14 22:13:20.1",
        "9999-12-31T23:59:59+14:00",
        "-0",
        "1e5",
        "é",
        CHROME_WINDOWS,
        GOOGLEBOT,
        "Windows",
        "MSIE Trident/ IEMobile",
        "\u{0}",
    ];
    let choice = match depth {
        0 => 7, // the top level is always an object, to get past the first checks
        1..=3 => rng.below(8),
        _ => rng.below(6),
    };
    match choice {
        0 => Value::Null,
        1 => json!(rng.below(2) == 1),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => json!(rng.next() >> rng.below(64)),
        4 => json!(f64::from_bits(rng.next())), // non-finite becomes null
        5 if rng.below(2) == 0 => json!(rng.pick(&strings)),
        5 => json!(random_agent(rng)),
        6 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let map = (0..rng.below(8))
                .map(|_| (rng.pick(KEYS).to_string(), random_value(rng, depth + 1)))
                .collect();
            Value::Object(map)
        }
    }
}

/// A jumble of the markers woothee's parser branches on, to walk its code paths.
fn random_agent(rng: &mut Rng) -> String {
    const TOKENS: &[&str] = &[
        "Mozilla/5.0 ",
        "(",
        ")",
        ";",
        " ",
        "/",
        "Windows",
        "Windows NT 10.0;",
        "Windows Phone 8.1)",
        "Xbox",
        "MSIE 9.0;",
        "compatible; MSIE",
        "Trident/7.0;",
        " rv:11.0",
        "IEMobile/10.0;",
        "Edg/120.1",
        "Chrome/1.2",
        "CriOS/",
        "Firefox/",
        "FxiOS/9",
        "Safari/",
        "Version/17.2",
        "Opera",
        "OPR/1",
        "iPhone;",
        "iPad;",
        "CPU iPhone OS 17_2 like Mac OS X",
        "Mac OS X 10_15)",
        "Android 14",
        "Android-",
        "Linux",
        "BlackBerry9700/5.0 ",
        "BB10",
        "PlayStation 4 1.0)",
        "PSP (PlayStation Portable); 2.0)",
        "CrOS x)",
        "FreeBSD 1;",
        "DoCoMo/2.0 ",
        "KDDI-",
        "SoftBank/1.0/",
        "WILLCOM;",
        "jig browser",
        "bot",
        "crawler",
        "spider",
        "Googlebot/2.1",
        "rss",
        "HttpClient",
        "Java/",
        "PHP",
        "SamsungBrowser/2",
        "YaBrowser/1.2.3.4",
        "GSA/1",
        "Vivaldi/1",
        "é",
        "\u{0}",
    ];
    (0..rng.below(12)).map(|_| *rng.pick(TOKENS)).collect()
}

/// `user_of` finds the user `normalize` does, and nothing when `normalize`
/// rejects the message before or at its user.
fn assert_user_of_agrees(n: &mut Normalizer, input: &[u8]) {
    let found = n.user_of(input);
    match n.normalize(input) {
        Ok(event) => assert_eq!(
            found,
            Some(event.user),
            "{}",
            String::from_utf8_lossy(input)
        ),
        Err(r)
            if matches!(
                r.reason,
                Reason::NotJson | Reason::NotObject | Reason::MissingUser
            ) =>
        {
            // A document serde_json's value parser refuses (a number out
            // of range) may still be skimmed: it is rejected either way.
            if r.reason != Reason::NotJson {
                assert_eq!(found, None, "{}: {r}", String::from_utf8_lossy(input));
            }
        }
        Err(_) => {}
    }
}

#[test]
fn user_of_reads_the_user_normalize_reads() {
    let mut n = Normalizer::new(FieldMapping::default());
    let mut nested = Normalizer::new(mapping(json!({"user": "meta.who.id"})));
    for input in [
        r#"{"user_id": "a", "event": "v", "ts": 1}"#,
        r#"{"us\u0065r_id": "esc\u00e9", "event": "v", "ts": 1}"#,
        r#"{"user_id": "first", "user_id": "last", "event": "v", "ts": 1}"#,
        r#"{"user_id": null, "user": 42, "event": "v", "ts": 1}"#,
        r#"{"user_id": "", "user": "b", "event": "v", "ts": 1}"#,
        r#"{"user_id": 1.5, "event": "v", "ts": 1}"#,
        r#"{"distinct_id": "d", "event": "v", "ts": 1, "x": [1, {"y": 2}]}"#,
        r#"  {"user": "spaced"  , "event" : "v", "ts": 1}  "#,
        r#"{"event": "v", "ts": 1}"#,
        r#"["user_id", "a"]"#,
        r#"{"user_id": "a", "event": "v", "ts": 1"#,
        r#"{"meta": {"who": {"id": "n"}}, "event": "v", "ts": 1}"#,
        r#"{"meta": {"who": "flat"}, "event": "v", "ts": 1}"#,
        r#"{"meta": {"who": {"id": 7}, "who": {"id": 8}}, "event": "v", "ts": 1}"#,
    ] {
        assert_user_of_agrees(&mut n, input.as_bytes());
        assert_user_of_agrees(&mut nested, input.as_bytes());
    }
    assert_eq!(n.user_of(br#"{"us\u0065r_id": "x"}"#).as_deref(), Some("x"));
    assert_eq!(
        nested
            .user_of(br#"{"meta": {"who": {"id": 7}}}"#)
            .as_deref(),
        Some("7")
    );
}

#[test]
fn never_panics_on_random_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut n = Normalizer::new(FieldMapping::default());
    let mut mapped = Normalizer::new(mapping(json!({
        "user": "meta.user_id", "time": "properties.ts.x", "event": "", "time_format": "s"
    })));
    let seeds: Vec<Vec<u8>> = [
        json!({"event_id": "e", "ts": T_MS, "user_id": "u", "event": "v", "properties": {"page": "/"}}),
        json!({"user_id": 1, "action": "a", "timestamp": T_S, "ip": "i"}),
        json!({"event_timestamp": "2024-03-01 12:34:56.789", "user": "a", "page": "/", "event": "c"}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect();

    let mut accepted = 0;
    for round in 0..30_000 {
        let input: Vec<u8> = match round % 3 {
            // Arbitrary bytes, biased towards JSON punctuation.
            0 => (0..rng.below(64))
                .map(|_| match rng.below(3) {
                    0 => *rng.pick(b"{}[]\":,.-0123456789eEtfn \\u"),
                    _ => rng.next() as u8,
                })
                .collect(),
            // A valid message with a few bytes flipped, inserted or cut.
            1 => {
                let mut bytes = rng.pick(&seeds).clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(bytes.len() + 1);
                    match rng.below(3) {
                        0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                        1 => bytes.insert(at, rng.next() as u8),
                        _ => bytes.truncate(at),
                    }
                }
                bytes
            }
            // Structurally valid JSON with the known keys and random value types.
            _ => random_value(&mut rng, 0).to_string().into_bytes(),
        };
        accepted += usize::from(n.normalize(&input).is_ok());
        assert_user_of_agrees(&mut n, &input);
        assert_user_of_agrees(&mut mapped, &input);
    }
    // The generator must reach past the rejections, or enrichment and props go untested.
    assert!(accepted > 100, "only {accepted} inputs accepted");
}

/// The normalizer as it was written before it parsed into borrowed members:
/// the whole message as a `serde_json::Value`, fields looked up and removed
/// in its map. What `normalize` must still give, rejections included.
mod reference {
    use serde_json::{Map, Value};

    use crate::fields::{Candidates, Path};
    use crate::{
        Event, MAX_DETAIL_VALUE, Normalizer, Reason, Rejection, clip, kind, reject, show, time,
    };

    pub(super) fn normalize(n: &mut Normalizer, raw: &[u8]) -> Result<Event, Rejection> {
        let value: Value = serde_json::from_slice(raw)
            .map_err(|e| reject(Reason::NotJson, clip(&e.to_string(), MAX_DETAIL_VALUE)))?;
        let Value::Object(mut map) = value else {
            let detail = format!("expected a JSON object, got {}", kind(&value));
            return Err(reject(Reason::NotObject, detail));
        };
        let p = n.paths.clone();
        let user = required(&mut map, &p.user, Reason::MissingUser, "user", true)?;
        let name = required(
            &mut map,
            &p.event,
            Reason::MissingEvent,
            "event name",
            false,
        )?;
        let Some((path, value)) = first(&map, &p.time) else {
            let detail = format!("no time field (tried {})", p.time.names());
            return Err(reject(Reason::MissingTime, detail));
        };
        let time = time::parse(value, n.time_format).map_err(|e| {
            let detail = format!("field `{}`: {} {e}", path.name(), show(value));
            reject(Reason::BadTime, detail)
        })?;
        take(&mut map, path.segments());
        let id = optional(&mut map, &p.id);
        let session = optional(&mut map, &p.session);
        let page = optional(&mut map, &p.path);
        let device = optional(&mut map, &p.device);
        let agent = n.agents.lookup(&optional(&mut map, &p.user_agent));
        Ok(Event {
            id,
            time,
            user,
            name,
            session,
            path: page,
            device: if device.is_empty() {
                agent.device.to_owned()
            } else {
                device
            },
            browser: agent.browser,
            os: agent.os,
            props: flatten(map),
        })
    }

    fn get<'m>(map: &'m Map<String, Value>, segments: &[String]) -> Option<&'m Value> {
        let (last, parents) = segments.split_last()?;
        let mut current = map;
        for segment in parents {
            current = current.get(segment)?.as_object()?;
        }
        current.get(last)
    }

    fn first<'c, 'm>(
        map: &'m Map<String, Value>,
        c: &'c Candidates,
    ) -> Option<(&'c Path, &'m Value)> {
        c.paths()
            .iter()
            .find_map(|path| match get(map, path.segments()) {
                None | Some(Value::Null) => None,
                Some(value) => Some((path, value)),
            })
    }

    fn take(map: &mut Map<String, Value>, segments: &[String]) -> Option<Value> {
        let (first, rest) = segments.split_first()?;
        if rest.is_empty() {
            return map.remove(first);
        }
        let child = map.get_mut(first)?.as_object_mut()?;
        let taken = take(child, rest)?;
        if child.is_empty() {
            map.remove(first);
        }
        Some(taken)
    }

    fn required(
        map: &mut Map<String, Value>,
        c: &Candidates,
        reason: Reason,
        what: &str,
        integer_ok: bool,
    ) -> Result<String, Rejection> {
        let Some((path, value)) = first(map, c) else {
            return Err(reject(
                reason,
                format!("no {what} field (tried {})", c.names()),
            ));
        };
        let text = match value {
            Value::String(s) if s.is_empty() => {
                return Err(reject(reason, format!("field `{}` is empty", path.name())));
            }
            Value::String(s) => s.clone(),
            Value::Number(n) if integer_ok && (n.is_i64() || n.is_u64()) => n.to_string(),
            other => {
                let expected = if integer_ok {
                    "a string or an integer"
                } else {
                    "a string"
                };
                let detail = format!(
                    "field `{}`: expected {expected}, got {}",
                    path.name(),
                    show(other)
                );
                return Err(reject(reason, detail));
            }
        };
        take(map, path.segments());
        Ok(text)
    }

    fn optional(map: &mut Map<String, Value>, c: &Candidates) -> String {
        let Some((path, value)) = first(map, c) else {
            return String::new();
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return String::new(),
        };
        take(map, path.segments());
        text
    }

    fn flatten(mut map: Map<String, Value>) -> Vec<(String, String)> {
        let nested = match map.remove("properties") {
            Some(Value::Object(nested)) => nested,
            Some(other) => {
                map.insert("properties".to_owned(), other);
                Map::new()
            }
            None => Map::new(),
        };
        let text = |v: Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        };
        let mut props = std::collections::BTreeMap::new();
        for (k, v) in map {
            if let Some(t) = text(v) {
                props.insert(k, t);
            }
        }
        for (k, v) in nested {
            if let Some(t) = text(v) {
                props.entry(k).or_insert(t);
            }
        }
        props.into_iter().collect()
    }
}

/// A random object's text with keys repeated: what a serialized `Value`
/// never has, and a parsed map resolves to the last.
fn random_members(rng: &mut Rng, depth: usize) -> String {
    let members: Vec<String> = (0..rng.below(9))
        .map(|_| {
            let value = if depth < 2 && rng.below(3) == 0 {
                random_members(rng, depth + 1)
            } else {
                random_value(rng, 1).to_string()
            };
            format!("{}: {value}", json!(rng.pick(KEYS)))
        })
        .collect();
    format!("{{{}}}", members.join(", "))
}

#[test]
fn normalize_equals_the_value_based_reference() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut n = Normalizer::new(FieldMapping::default());
    let mut r = Normalizer::new(FieldMapping::default());
    let config = json!({"user": "meta.user_id", "time": "properties.ts", "path": "meta.page"});
    let (mut mapped, mut m) = (
        Normalizer::new(mapping(config.clone())),
        Normalizer::new(mapping(config)),
    );
    let mut accepted = 0;
    for round in 0..30_000 {
        let input = match round % 3 {
            0 => random_value(&mut rng, 0).to_string(),
            1 => random_members(&mut rng, 0),
            // A valid message, so that the comparison reaches the props.
            _ => format!(
                r#"{{"user_id": "u{}", "event": "v", "ts": {T_MS}, "meta": {}, "properties": {}, "x": {}}}"#,
                rng.below(9),
                random_members(&mut rng, 1),
                random_members(&mut rng, 1),
                random_value(&mut rng, 1),
            ),
        };
        let fast = n.normalize(input.as_bytes());
        assert_eq!(
            fast,
            reference::normalize(&mut r, input.as_bytes()),
            "{input}"
        );
        assert_eq!(
            mapped.normalize(input.as_bytes()),
            reference::normalize(&mut m, input.as_bytes()),
            "{input}"
        );
        accepted += usize::from(fast.is_ok());
    }
    assert!(accepted > 5_000, "only {accepted} inputs accepted");
}
