//! The demo source: a built-in generator of realistic clickstream for trying weft
//! without Kafka.
//!
//! The generator simulates a small web shop. A fixed number of users browse at any one
//! time; each visit (session) starts on a landing page and walks a weighted state
//! machine of page views, clicks and searches, with some visitors going down the funnel
//! page view → add to cart → checkout → purchase and most leaving early. A visitor who
//! leaves may come back more than 30 minutes later, so sessions of one user are
//! separated by a long gap while events within a session are seconds to minutes apart.
//!
//! Session timing lives on a virtual clock (a discrete-event simulation) that is only
//! driven by the seed, so the events are deterministic; the source then emits them at
//! `rate` per second of wall-clock time, stamped with the wall clock. Both clocks
//! advance at the same speed on average, so the gaps survive into event time.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::{DemoConfig, Identity, Message, Offsets, Source, SourceError};

const SECOND_MS: f64 = 1_000.0;
const MINUTE_MS: u64 = 60_000;
/// The shortest time away before a visitor comes back: a little over the 30 minutes of
/// inactivity that end a session, so that the two clocks drifting apart a little
/// cannot merge two visits.
const MIN_AWAY_MS: u64 = 32 * MINUTE_MS;
/// The longest time away; users who would stay away longer are simply not brought back.
const MAX_AWAY_MS: u64 = 6 * 60 * MINUTE_MS;
/// Chance that a leaving visitor comes back later rather than never.
const RETURN_CHANCE: f64 = 0.65;
/// The longest visit, in events.
const MAX_SESSION_EVENTS: u32 = 60;
/// At most this many times `rate` users browse at once, so that the mean gap between
/// two events of a session (users / rate seconds) stays at most a minute.
const MAX_USERS_PER_RATE: u32 = 60;
/// Gaps within a session are the mean gap times a factor drawn in this range.
const GAP_FACTOR: (f64, f64) = (0.05, 6.0);

/// Emits the generator's events at a steady rate, stamped with the wall clock.
pub(crate) struct DemoSource {
    config: DemoConfig,
    generator: Generator,
    /// When the first event was due; event `n` after it is due `n / rate` seconds later.
    anchor: Option<Instant>,
    /// Events emitted since `anchor` (or accounted for, when a backlog was dropped).
    emitted: u64,
    /// A demo stream never runs dry, so no partition is ever caught up.
    caught_up: BTreeSet<i32>,
}

impl DemoSource {
    pub(crate) fn new(config: &DemoConfig) -> Result<Self, SourceError> {
        if config.rate == 0 {
            return Err(SourceError::DemoConfig {
                reason: "rate must be at least 1 event per second",
            });
        }
        if config.users == 0 {
            return Err(SourceError::DemoConfig {
                reason: "users must be at least 1",
            });
        }
        Ok(Self {
            config: config.clone(),
            generator: Generator::new(config, 0),
            anchor: None,
            emitted: 0,
            caught_up: BTreeSet::new(),
        })
    }

    fn rate(&self) -> f64 {
        f64::from(self.config.rate)
    }

    /// How many events are due since the anchor at `now`: the first one at once.
    fn due(&self, anchor: Instant, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(anchor).as_secs_f64();
        (elapsed * self.rate()) as u64 + 1
    }
}

impl Source for DemoSource {
    fn resume(&mut self, offsets: &Offsets, last: Option<&Identity>) -> Result<(), SourceError> {
        if let Some(other) = last.filter(|l| **l != Identity::Demo) {
            return Err(other.changed(Identity::Demo));
        }
        let first = offsets.get(&0).copied().unwrap_or(0).max(0);
        // Start a fresh simulation whose numbering continues where the last run stopped.
        self.generator = Generator::new(&self.config, first);
        Ok(())
    }

    fn identity(&self) -> Identity {
        Identity::Demo
    }

    fn poll(
        &mut self,
        out: &mut Vec<Message>,
        max: usize,
        timeout: Duration,
    ) -> Result<bool, SourceError> {
        if max == 0 {
            return Ok(true);
        }
        let mut now = Instant::now();
        let anchor = *self.anchor.get_or_insert(now);
        let mut due = self.due(anchor, now);
        if due <= self.emitted {
            // Nothing due yet: sleep until the next event, or give up at the timeout.
            let next_at = anchor + Duration::from_secs_f64(self.emitted as f64 / self.rate());
            let wait = next_at.saturating_duration_since(now);
            if wait > timeout {
                std::thread::sleep(timeout);
                return Ok(true);
            }
            std::thread::sleep(wait);
            now = Instant::now();
            due = self.due(anchor, now).max(self.emitted + 1);
        }
        // After a stall, catch up at most a second's worth of events rather than
        // flooding the pipeline with everything it missed.
        let burst = u64::from(self.config.rate);
        if due - self.emitted > burst {
            tracing::trace!(
                dropped = due - self.emitted - burst,
                "Demo source skipped events the pipeline had no time for."
            );
            self.emitted = due - burst;
        }
        let count = (due - self.emitted).min(max as u64);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        out.reserve(count as usize);
        for _ in 0..count {
            let event = self.generator.next_event(ts);
            out.push(Message {
                payload: event.payload,
                partition: 0,
                offset: event.offset,
                key: None,
            });
        }
        self.emitted += count;
        Ok(true)
    }

    fn caught_up(&self) -> &BTreeSet<i32> {
        &self.caught_up
    }

    fn describe(&self) -> Value {
        json!({
            "kind": "demo",
            "rate": self.config.rate,
            "users": self.config.users,
            "seed": self.config.seed,
            "next_offset": self.generator.next_offset,
        })
    }
}

/// One generated event, with the simulation details the tests look at.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the simulation details are for the tests")
)]
pub(crate) struct Generated {
    pub(crate) offset: i64,
    /// When the simulation scheduled it, in ms since the simulation started.
    pub(crate) at_ms: u64,
    pub(crate) session: u64,
    pub(crate) user: u64,
    pub(crate) payload: Vec<u8>,
}

/// The deterministic clickstream simulation.
pub(crate) struct Generator {
    seed: u64,
    rng: StdRng,
    /// Mean gap between two events of a session, in virtual ms.
    mean_gap_ms: f64,
    next_offset: i64,
    next_session: u64,
    next_user: u64,
    /// One slot per concurrent visitor; a slot gets a new visit when one ends.
    slots: Vec<Visit>,
    /// Slots by when their next event is due, in virtual ms.
    queue: BinaryHeap<Reverse<(u64, usize)>>,
    /// Users who left and will come back, by when they may.
    away: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Generator {
    /// A simulation for `config` whose first event gets offset `first_offset`.
    pub(crate) fn new(config: &DemoConfig, first_offset: i64) -> Self {
        let rate = config.rate.max(1);
        let users = config
            .users
            .clamp(1, rate.saturating_mul(MAX_USERS_PER_RATE));
        // Resuming mixes the offset in, so a restart does not replay the same visits.
        let rng = StdRng::seed_from_u64(mix(config.seed, first_offset as u64));
        let mut generator = Self {
            seed: config.seed,
            rng,
            mean_gap_ms: f64::from(users) / f64::from(rate) * SECOND_MS,
            next_offset: first_offset,
            next_session: 1,
            next_user: 1,
            slots: Vec::with_capacity(users as usize),
            queue: BinaryHeap::with_capacity(users as usize),
            away: BinaryHeap::new(),
        };
        for slot in 0..users as usize {
            // Spread the first visits over one mean gap, so they do not all land at once.
            let start = (generator.rng.random::<f64>() * generator.mean_gap_ms) as u64;
            let visit = generator.new_visit(start);
            generator.slots.push(visit);
            generator.queue.push(Reverse((start, slot)));
        }
        generator
    }

    /// The next event in virtual-time order, stamped `ts_ms`.
    pub(crate) fn next_event(&mut self, ts_ms: i64) -> Generated {
        // The queue always holds one entry per slot, and there is at least one slot.
        let Some(Reverse((at_ms, slot))) = self.queue.pop() else {
            unreachable!("the demo generator has no visitors");
        };
        let offset = self.next_offset;
        self.next_offset += 1;
        let event_id = format!("demo-{}-{offset}", self.seed);

        let visit = &mut self.slots[slot];
        let step = visit.next;
        let (event, properties) = visit.perform(step, &mut self.rng);
        let payload = visit
            .user
            .payload(&event_id, ts_ms, event, &visit.page, properties);
        let generated = Generated {
            offset,
            at_ms,
            session: visit.id,
            user: visit.user.number,
            payload,
        };

        match visit.choose_next(step, &mut self.rng) {
            Some(next) => {
                visit.next = next;
                let gap = self.gap_ms();
                self.queue.push(Reverse((at_ms + gap, slot)));
            }
            None => {
                let user = visit.user.number;
                if self.rng.random_bool(RETURN_CHANCE) {
                    let away = MIN_AWAY_MS + (self.exponential() * 40.0 * MINUTE_MS as f64) as u64;
                    if away <= MAX_AWAY_MS {
                        self.away.push(Reverse((at_ms + away, user)));
                    }
                }
                // Someone else takes the free slot a moment later.
                let start = at_ms + self.gap_ms();
                self.slots[slot] = self.new_visit(start);
                self.queue.push(Reverse((start, slot)));
            }
        }
        generated
    }

    /// A new visit starting at `start_ms`: by a returning user if one is due back, else by a new one.
    fn new_visit(&mut self, start_ms: u64) -> Visit {
        let number = match self.away.peek() {
            Some(&Reverse((back_at, user))) if back_at <= start_ms => {
                self.away.pop();
                user
            }
            _ => {
                self.next_user += 1;
                self.next_user - 1
            }
        };
        let id = self.next_session;
        self.next_session += 1;
        Visit {
            id,
            user: User::new(self.seed, number),
            next: Step::Land,
            page: Page::Home,
            cart: Vec::new(),
            events: 0,
        }
    }

    /// A gap between two events of a visit: mostly short, sometimes several times the mean.
    fn gap_ms(&mut self) -> u64 {
        let factor = self.exponential().clamp(GAP_FACTOR.0, GAP_FACTOR.1);
        ((factor * self.mean_gap_ms) as u64).max(1)
    }

    /// A draw from the exponential distribution with mean 1.
    fn exponential(&mut self) -> f64 {
        -(1.0 - self.rng.random::<f64>()).ln()
    }
}

/// Mixes two numbers into a well-spread seed (SplitMix64 finaliser).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks one of `choices` with probability proportional to its weight.
fn pick<T: Copy>(rng: &mut StdRng, choices: &[(u32, T)]) -> T {
    let total: u32 = choices.iter().map(|&(weight, _)| weight).sum();
    let mut roll = rng.random_range(0..total.max(1));
    for &(weight, choice) in choices {
        if roll < weight {
            return choice;
        }
        roll -= weight;
    }
    choices[choices.len() - 1].1
}

/// A user and everything about them that stays fixed: device, browser and address.
struct User {
    number: u64,
    user_agent: String,
    ip: String,
    platform: Option<&'static str>,
}

impl User {
    /// The user with this number; the same seed and number always give the same user.
    fn new(seed: u64, number: u64) -> Self {
        let rng = &mut StdRng::seed_from_u64(mix(seed ^ 0x5EED_0F05_E125, number));
        let device = pick(
            rng,
            &[
                (45, Device::Desktop),
                (45, Device::Phone),
                (10, Device::Tablet),
            ],
        );
        let (user_agent, os) = match device {
            Device::Desktop => match pick(rng, &[(60, 0), (25, 1), (15, 2)]) {
                0 => (chrome_on_windows(rng), "windows"),
                1 => (safari_on_macos(rng), "macos"),
                _ => (firefox_on_linux(rng), "linux"),
            },
            Device::Phone if rng.random_bool(0.55) => (safari_on_iphone(rng), "ios"),
            Device::Phone => (chrome_on_android(rng), "android"),
            Device::Tablet => (safari_on_ipad(rng), "ios"),
        };
        // Browsers do not say (the device comes from the user agent); a quarter of
        // mobile users are on the app, which reports its platform.
        let platform = match device {
            Device::Desktop => None,
            Device::Phone | Device::Tablet => pick(rng, &[(75, None), (25, Some(os))]),
        };
        Self {
            number,
            user_agent,
            ip: public_ip(rng),
            platform,
        }
    }

    /// The event as weft receives it.
    fn payload(
        &self,
        event_id: &str,
        ts_ms: i64,
        event: &str,
        page: &Page,
        properties: Value,
    ) -> Vec<u8> {
        let mut body = json!({
            "event_id": event_id,
            "ts": ts_ms,
            "user_id": format!("u{}", self.number),
            "event": event,
            "path": page.path(),
            "user_agent": self.user_agent,
            "ip": self.ip,
            "properties": properties,
        });
        if let (Some(platform), Some(fields)) = (self.platform, body.as_object_mut()) {
            fields.insert("platform".to_owned(), platform.into());
        }
        // Serialising a `Value` cannot fail: its keys are strings.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[derive(Clone, Copy)]
enum Device {
    Desktop,
    Phone,
    Tablet,
}

fn chrome_on_windows(rng: &mut StdRng) -> String {
    let version = rng.random_range(122..=127);
    format!(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{version}.0.0.0 Safari/537.36"
    )
}

fn safari_on_macos(rng: &mut StdRng) -> String {
    let version = pick(
        rng,
        &[(2, "17.3.1"), (3, "17.4.1"), (3, "17.5"), (1, "16.6")],
    );
    format!(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{version} Safari/605.1.15"
    )
}

fn firefox_on_linux(rng: &mut StdRng) -> String {
    let version = rng.random_range(123..=128);
    let system = pick(
        rng,
        &[(2, "X11; Linux x86_64"), (1, "X11; Ubuntu; Linux x86_64")],
    );
    format!("Mozilla/5.0 ({system}; rv:{version}.0) Gecko/20100101 Firefox/{version}.0")
}

/// iOS versions with the Safari version they ship with.
const IOS_VERSIONS: [(u32, (&str, &str)); 4] = [
    (3, ("17_5_1", "17.5")),
    (3, ("17_4_1", "17.4.1")),
    (2, ("17_3_1", "17.3.1")),
    (1, ("16_7_8", "16.6")),
];

fn safari_on_iphone(rng: &mut StdRng) -> String {
    let (os, version) = pick(rng, &IOS_VERSIONS);
    format!(
        "Mozilla/5.0 (iPhone; CPU iPhone OS {os} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{version} Mobile/15E148 Safari/604.1"
    )
}

fn safari_on_ipad(rng: &mut StdRng) -> String {
    let (os, version) = pick(rng, &IOS_VERSIONS);
    format!(
        "Mozilla/5.0 (iPad; CPU OS {os} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{version} Mobile/15E148 Safari/604.1"
    )
}

fn chrome_on_android(rng: &mut StdRng) -> String {
    let (android, model) = pick(
        rng,
        &[
            (3, ("14", "Pixel 8")),
            (2, ("14", "SM-S921B")),
            (2, ("13", "SM-A536B")),
            (1, ("13", "Pixel 7a")),
            (1, ("12", "moto g(60)")),
        ],
    );
    let version = rng.random_range(122..=127);
    format!(
        "Mozilla/5.0 (Linux; Android {android}; {model}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{version}.0.0.0 Mobile Safari/537.36"
    )
}

/// A plausible public address: IPv4 from blocks allocated to ISPs, sometimes IPv6.
fn public_ip(rng: &mut StdRng) -> String {
    if rng.random_bool(0.1) {
        let [a, b, c]: [u16; 3] = rng.random();
        return format!("2a02:{a:x}:{b:x}::{c:x}");
    }
    const FIRST_OCTETS: [u8; 12] = [24, 31, 46, 62, 73, 81, 98, 109, 151, 176, 188, 212];
    let first = FIRST_OCTETS[rng.random_range(0..FIRST_OCTETS.len())];
    format!(
        "{first}.{}.{}.{}",
        rng.random_range(0..=255),
        rng.random_range(0..=255),
        rng.random_range(1..=254)
    )
}

/// Where a visitor is.
#[derive(Clone, Copy, PartialEq)]
enum Page {
    Home,
    Listing,
    Product(usize),
    Blog(usize),
    Cart,
    Checkout,
}

impl Page {
    fn path(&self) -> String {
        match *self {
            Page::Home => "/".to_owned(),
            Page::Listing => "/products".to_owned(),
            Page::Product(index) => format!("/products/{}", index + 1),
            Page::Blog(index) => format!("/blog/{}", BLOG_POSTS[index].0),
            Page::Cart => "/cart".to_owned(),
            Page::Checkout => "/checkout".to_owned(),
        }
    }

    fn title(&self) -> String {
        match *self {
            Page::Home => "Fernweh Outfitters".to_owned(),
            Page::Listing => "All products".to_owned(),
            Page::Product(index) => product_name(index),
            Page::Blog(index) => BLOG_POSTS[index].1.to_owned(),
            Page::Cart => "Your cart".to_owned(),
            Page::Checkout => "Checkout".to_owned(),
        }
    }
}

/// What a visitor does next.
#[derive(Clone, Copy)]
enum Step {
    /// Arrive on a landing page, from a referrer.
    Land,
    View(Page),
    /// Click something on the current page.
    Click,
    Search,
    AddToCart,
    Checkout,
    Purchase,
}

/// One visit (session) of one user.
struct Visit {
    id: u64,
    user: User,
    next: Step,
    page: Page,
    /// Products in the cart.
    cart: Vec<usize>,
    events: u32,
}

impl Visit {
    /// Performs `step`: moves to its page and returns the event name and properties.
    fn perform(&mut self, step: Step, rng: &mut StdRng) -> (&'static str, Value) {
        self.events += 1;
        match step {
            Step::Land => {
                let product = Page::Product(rng.random_range(0..PRODUCTS));
                let blog = Page::Blog(rng.random_range(0..BLOG_POSTS.len()));
                let landing = [
                    (40, Page::Home),
                    (15, Page::Listing),
                    (25, product),
                    (20, blog),
                ];
                self.page = pick(rng, &landing);
                let mut properties = self.page_view(rng);
                let referrer = pick(rng, REFERRERS);
                if let (Some(referrer), Some(fields)) = (referrer, properties.as_object_mut()) {
                    fields.insert("referrer".to_owned(), referrer.into());
                }
                ("page_view", properties)
            }
            Step::View(page) => {
                self.page = page;
                ("page_view", self.page_view(rng))
            }
            Step::Click => {
                let element = match self.page {
                    Page::Home => pick(
                        rng,
                        &[
                            (3, "hero_banner"),
                            (2, "nav_products"),
                            (1, "newsletter_signup"),
                        ],
                    ),
                    Page::Listing => pick(
                        rng,
                        &[(3, "filter_category"), (2, "sort_price"), (1, "load_more")],
                    ),
                    Page::Product(_) => pick(
                        rng,
                        &[(3, "image_gallery"), (2, "reviews_tab"), (1, "size_guide")],
                    ),
                    _ => pick(rng, &[(1, "nav_home"), (1, "help")]),
                };
                ("click", json!({ "element": element }))
            }
            Step::Search => {
                let query = SEARCHES[rng.random_range(0..SEARCHES.len())];
                let results = rng.random_range(0..=PRODUCTS);
                ("search", json!({ "query": query, "results": results }))
            }
            Step::AddToCart => {
                // Added from the product page the visitor is on.
                let product = match self.page {
                    Page::Product(index) => index,
                    _ => rng.random_range(0..PRODUCTS),
                };
                self.cart.push(product);
                let properties = json!({
                    "product_id": format!("p{}", product + 1),
                    "name": product_name(product),
                    "price": cents_to_price(product_price_cents(product)),
                    "quantity": 1,
                    "currency": "USD",
                });
                ("add_to_cart", properties)
            }
            Step::Checkout => {
                self.page = Page::Checkout;
                (
                    "checkout",
                    json!({
                        "items": self.cart.len(),
                        "cart_value": cents_to_price(self.cart_cents()),
                        "currency": "USD",
                    }),
                )
            }
            Step::Purchase => {
                let properties = json!({
                    "order_id": format!("o{}", self.id),
                    "items": self.cart.len(),
                    "revenue": cents_to_price(self.cart_cents()),
                    "currency": "USD",
                    "payment": pick(rng, &[(6, "card"), (3, "paypal"), (1, "apple_pay")]),
                });
                self.cart.clear();
                ("purchase", properties)
            }
        }
    }

    fn page_view(&self, rng: &mut StdRng) -> Value {
        json!({ "title": self.page.title(), "load_ms": rng.random_range(120..2_400) })
    }

    fn cart_cents(&self) -> u64 {
        self.cart.iter().map(|&p| product_price_cents(p)).sum()
    }

    /// What the visitor does after `done`, or `None` when they leave.
    fn choose_next(&self, done: Step, rng: &mut StdRng) -> Option<Step> {
        if self.events >= MAX_SESSION_EVENTS {
            return None;
        }
        let product = Step::View(Page::Product(rng.random_range(0..PRODUCTS)));
        let blog = Step::View(Page::Blog(rng.random_range(0..BLOG_POSTS.len())));
        let cart = if self.cart.is_empty() { 0 } else { 6 };
        // Weights out of roughly 100; `None` is leaving.
        let choices: &[(u32, Option<Step>)] = match (done, self.page) {
            (Step::Checkout, _) => &[(55, Some(Step::Purchase)), (45, None)],
            (Step::Purchase, _) => &[(15, Some(Step::View(Page::Home))), (85, None)],
            (Step::AddToCart, _) => &[
                (55, Some(Step::View(Page::Cart))),
                (28, Some(product)),
                (17, None),
            ],
            (Step::Search, _) => &[(60, Some(product)), (12, Some(Step::Search)), (28, None)],
            (_, Page::Home) => &[
                (30, Some(Step::View(Page::Listing))),
                (15, Some(Step::Search)),
                (10, Some(blog)),
                (12, Some(product)),
                (6, Some(Step::Click)),
                (27, None),
            ],
            (_, Page::Listing) => &[
                (55, Some(product)),
                (10, Some(Step::Search)),
                (8, Some(Step::Click)),
                (27, None),
            ],
            (_, Page::Product(_)) => &[
                (22, Some(Step::AddToCart)),
                (28, Some(product)),
                (10, Some(Step::Click)),
                (8, Some(Step::View(Page::Listing))),
                (cart, Some(Step::View(Page::Cart))),
                (27, None),
            ],
            (_, Page::Blog(_)) => &[
                (18, Some(blog)),
                (12, Some(Step::View(Page::Listing))),
                (10, Some(product)),
                (60, None),
            ],
            (_, Page::Cart) if !self.cart.is_empty() => {
                &[(50, Some(Step::Checkout)), (15, Some(product)), (35, None)]
            }
            (_, Page::Cart | Page::Checkout) => &[(30, Some(product)), (70, None)],
        };
        pick(rng, choices)
    }
}

const PRODUCTS: usize = 40;
const PRODUCT_KINDS: [&str; 8] = [
    "Trail Runner",
    "Rain Jacket",
    "Daypack",
    "Wool Socks",
    "Water Bottle",
    "Fleece",
    "Beanie",
    "Headlamp",
];
const PRODUCT_COLOURS: [&str; 5] = ["Slate", "Forest", "Ember", "Glacier", "Sand"];

fn product_name(index: usize) -> String {
    let kind = PRODUCT_KINDS[index % PRODUCT_KINDS.len()];
    let colour = PRODUCT_COLOURS[(index / PRODUCT_KINDS.len()) % PRODUCT_COLOURS.len()];
    format!("{kind} {colour}")
}

/// A fixed price per product, between $9.99 and $149.99.
fn product_price_cents(index: usize) -> u64 {
    999 + (index as u64 * 3_517) % 14_000
}

fn cents_to_price(cents: u64) -> f64 {
    cents as f64 / 100.0
}

/// Blog posts: slug and title.
const BLOG_POSTS: [(&str, &str); 6] = [
    ("choosing-trail-shoes", "How to choose trail shoes"),
    (
        "weekend-hike-packing-list",
        "A packing list for a weekend hike",
    ),
    ("caring-for-wool", "Caring for wool"),
    ("gifts-under-50", "Gifts under $50"),
    ("behind-the-seams", "Behind the seams"),
    ("layering-explained", "Layering, explained"),
];

const SEARCHES: [&str; 12] = [
    "running shoes",
    "rain jacket",
    "backpack",
    "socks",
    "water bottle",
    "fleece",
    "headlamp",
    "gift card",
    "sale",
    "waterproof",
    "kids",
    "beanie",
];

/// Where landing visitors come from; `None` is a direct visit.
const REFERRERS: &[(u32, Option<&str>)] = &[
    (35, None),
    (35, Some("https://www.google.com/")),
    (5, Some("https://www.bing.com/")),
    (5, Some("https://duckduckgo.com/")),
    (8, Some("https://www.facebook.com/")),
    (4, Some("https://t.co/")),
    (5, Some("https://www.instagram.com/")),
    (3, Some("https://news.ycombinator.com/")),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    const EVENTS: [&str; 6] = [
        "page_view",
        "click",
        "search",
        "add_to_cart",
        "checkout",
        "purchase",
    ];
    const SESSION_GAP_MS: u64 = 30 * MINUTE_MS;

    fn generate(config: &DemoConfig, first: i64, count: usize) -> Vec<Generated> {
        let mut generator = Generator::new(config, first);
        (0..count)
            .map(|_| generator.next_event(1_700_000_000_000))
            .collect()
    }

    fn parse(event: &Generated) -> Value {
        serde_json::from_slice(&event.payload).unwrap_or(Value::Null)
    }

    #[test]
    fn events_are_json_with_the_expected_fields() {
        let events = generate(&DemoConfig::default(), 0, 20_000);
        let mut ids = HashSet::new();
        let mut identities: HashMap<String, (String, String, Option<String>)> = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            let json = parse(event);
            assert!(
                json.is_object(),
                "not JSON: {:?}",
                String::from_utf8_lossy(&event.payload)
            );
            assert_eq!(event.offset, i as i64);
            let id = json["event_id"].as_str().unwrap_or_default().to_owned();
            assert!(
                !id.is_empty() && ids.insert(id.clone()),
                "event id {id:?} missing or repeated"
            );
            assert_eq!(json["ts"].as_i64(), Some(1_700_000_000_000));
            let user = json["user_id"].as_str().unwrap_or_default();
            assert!(
                user.starts_with('u') && user[1..].parse::<u64>().is_ok(),
                "user {user:?}"
            );
            assert!(
                EVENTS.contains(&json["event"].as_str().unwrap_or_default()),
                "{json}"
            );
            let path = json["path"].as_str().unwrap_or_default();
            let known = ["/", "/products", "/cart", "/checkout"].contains(&path)
                || path
                    .strip_prefix("/products/")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| (1..=40).contains(&n))
                || path.starts_with("/blog/");
            assert!(known, "path {path:?}");
            assert!(json["properties"].is_object(), "{json}");
            let agent = json["user_agent"].as_str().unwrap_or_default().to_owned();
            assert!(agent.starts_with("Mozilla/5.0 ("), "user agent {agent:?}");
            let ip = json["ip"].as_str().unwrap_or_default().to_owned();
            assert!(ip.parse::<std::net::IpAddr>().is_ok(), "ip {ip:?}");
            let platform = json
                .get("platform")
                .map(|p| p.as_str().unwrap_or_default().to_owned());
            match platform.as_deref() {
                None => {}
                Some("ios") => assert!(
                    agent.contains("iPhone") || agent.contains("iPad"),
                    "{agent}"
                ),
                Some("android") => assert!(agent.contains("Android"), "{agent}"),
                Some(other) => panic!("platform {other:?}"),
            }
            // A user keeps their device, browser and address.
            let identity = (agent, ip, platform);
            let known = identities
                .entry(user.to_owned())
                .or_insert_with(|| identity.clone());
            assert_eq!(*known, identity, "user {user} changed identity");
        }
        let kinds: HashSet<&str> = identities
            .values()
            .filter_map(|(agent, _, _)| {
                [
                    "Windows",
                    "Macintosh",
                    "Linux x86_64",
                    "iPhone",
                    "iPad",
                    "Android",
                ]
                .into_iter()
                .find(|kind| agent.contains(kind))
            })
            .collect();
        assert_eq!(kinds.len(), 6, "device kinds seen: {kinds:?}");
    }

    #[test]
    fn sessions_are_separated_by_long_gaps() {
        // Slow enough in virtual time to see visitors come back several times.
        let config = DemoConfig {
            rate: 2,
            users: 40,
            seed: 7,
        };
        let events = generate(&config, 0, 40_000);
        let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut sessions_per_user: HashMap<u64, HashSet<u64>> = HashMap::new();
        let mut previous_at = 0;
        for event in &events {
            assert!(
                event.at_ms >= previous_at,
                "the simulation went back in time"
            );
            previous_at = event.at_ms;
            if let Some(&(at, session)) = last.get(&event.user) {
                let gap = event.at_ms - at;
                if session == event.session {
                    assert!(
                        gap < SESSION_GAP_MS,
                        "gap of {gap} ms within session {session}"
                    );
                } else {
                    assert!(
                        gap > SESSION_GAP_MS,
                        "sessions {session} and {} only {gap} ms apart",
                        event.session
                    );
                }
            }
            last.insert(event.user, (event.at_ms, event.session));
            sessions_per_user
                .entry(event.user)
                .or_default()
                .insert(event.session);
        }
        let returning = sessions_per_user.values().filter(|s| s.len() > 1).count();
        assert!(returning > 10, "only {returning} users came back");
        // A user is in one session at a time: sessions do not interleave.
        let mut seen_sessions = HashSet::new();
        let mut current: HashMap<u64, u64> = HashMap::new();
        for event in &events {
            if current.get(&event.user) != Some(&event.session) {
                assert!(
                    seen_sessions.insert(event.session),
                    "session {} resumed",
                    event.session
                );
                current.insert(event.user, event.session);
            }
        }
    }

    #[test]
    fn funnel_steps_come_in_order_and_most_visitors_drop_off() {
        let events = generate(&DemoConfig::default(), 0, 50_000);
        let mut sessions: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for event in &events {
            let name = parse(event)["event"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            sessions.entry(event.session).or_default().push(name);
        }
        let funnel = ["page_view", "add_to_cart", "checkout", "purchase"];
        let mut reached = [0usize; 4];
        for names in sessions.values() {
            // Each step is preceded by the one before it.
            for (step, name) in funnel.iter().enumerate().skip(1) {
                for (i, _) in names.iter().enumerate().filter(|(_, n)| n == name) {
                    assert!(
                        names[..i].iter().any(|n| n == funnel[step - 1]),
                        "{name} without {} before it: {names:?}",
                        funnel[step - 1]
                    );
                }
            }
            for (step, name) in funnel.iter().enumerate() {
                reached[step] += usize::from(names.iter().any(|n| n == name));
            }
        }
        let total = sessions.len();
        assert_eq!(reached[0], total, "every session starts with a page view");
        assert!(
            reached[1] < total / 2 && reached[2] < reached[1] && reached[3] < reached[2],
            "{reached:?} of {total}"
        );
        assert!(reached[3] > 0, "nobody ever bought anything: {reached:?}");
    }

    #[test]
    fn same_seed_same_events() {
        let config = DemoConfig::default();
        let a = generate(&config, 0, 2_000);
        let b = generate(&config, 0, 2_000);
        assert!(a.iter().zip(&b).all(|(a, b)| a.payload == b.payload));
        let other = generate(&DemoConfig { seed: 43, ..config }, 0, 2_000);
        assert!(a.iter().zip(&other).any(|(a, b)| a.payload != b.payload));
    }

    #[test]
    fn resume_continues_the_offsets() -> Result<(), SourceError> {
        let config = DemoConfig {
            rate: 10_000,
            ..DemoConfig::default()
        };
        let mut source = DemoSource::new(&config)?;
        source.resume(&Offsets::from([(0, 1_234)]), None)?;
        let mut out = Vec::new();
        while out.len() < 50 {
            let wanted = 50 - out.len();
            assert!(source.poll(&mut out, wanted, Duration::from_millis(100))?);
        }
        let offsets: Vec<i64> = out.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, (1_234..1_284).collect::<Vec<_>>());
        let first: Value = serde_json::from_slice(&out[0].payload).unwrap_or(Value::Null);
        assert_eq!(first["event_id"], "demo-42-1234");
        assert!(source.caught_up().is_empty());
        assert_eq!(source.describe()["next_offset"], 1_284);
        Ok(())
    }

    #[test]
    fn paces_to_the_rate_without_overstaying_the_timeout() -> Result<(), SourceError> {
        let mut source = DemoSource::new(&DemoConfig {
            rate: 2,
            ..DemoConfig::default()
        })?;
        source.resume(&Offsets::new(), None)?;
        let mut out = Vec::new();
        // The first event is due at once; the next only after half a second.
        assert!(source.poll(&mut out, 10, Duration::from_millis(50))?);
        assert_eq!(out.len(), 1);
        let started = Instant::now();
        assert!(source.poll(&mut out, 10, Duration::from_millis(50))?);
        let waited = started.elapsed();
        assert_eq!(out.len(), 1, "emitted ahead of the rate");
        assert!(
            waited < Duration::from_millis(400),
            "blocked for {waited:?}"
        );

        // At a high rate, the count follows the wall clock.
        let mut source = DemoSource::new(&DemoConfig {
            rate: 1_000,
            ..DemoConfig::default()
        })?;
        source.resume(&Offsets::new(), None)?;
        let mut out = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            let before = Instant::now();
            assert!(source.poll(&mut out, 10_000, Duration::from_millis(20))?);
            assert!(
                before.elapsed() < Duration::from_millis(500),
                "a poll blocked for {:?}",
                before.elapsed()
            );
        }
        let elapsed_ms = started.elapsed().as_millis() as usize;
        assert!(
            out.len() <= elapsed_ms + 1,
            "{} events in {elapsed_ms} ms",
            out.len()
        );
        assert!(
            out.len() >= 150,
            "only {} events in {elapsed_ms} ms",
            out.len()
        );
        Ok(())
    }

    #[test]
    fn rejects_a_zero_rate() {
        let error = DemoSource::new(&DemoConfig {
            rate: 0,
            ..DemoConfig::default()
        })
        .err();
        assert!(error.is_some_and(|e| e.to_string().contains("rate")));
    }
}
