//! User-agent enrichment: browser, OS and device class from the `woothee` crate, behind a
//! bounded cache so the regex-heavy parse runs once per distinct user agent, not per event.

use std::collections::HashMap;

use woothee::parser::Parser;

/// Most user agents kept; the cache is cleared when full (cheap, and a hot set refills fast).
pub(crate) const CACHE_CAPACITY: usize = 4096;

/// Longer user agents are cut to this many bytes before parsing, which bounds both the
/// parse cost and the cache's memory (every marker woothee looks for sits well before).
const MAX_AGENT_LEN: usize = 512;

/// woothee's placeholder for anything it could not tell.
const UNKNOWN: &str = woothee::woothee::VALUE_UNKNOWN;

/// What a user agent says about the client; "" where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Agent {
    pub browser: String,
    pub os: String,
    pub device: &'static str,
}

pub(crate) struct AgentCache {
    parser: Parser,
    pub(crate) cache: HashMap<String, Agent>,
}

impl AgentCache {
    pub(crate) fn new() -> Self {
        AgentCache {
            parser: Parser::new(),
            cache: HashMap::new(),
        }
    }

    pub(crate) fn lookup(&mut self, user_agent: &str) -> Agent {
        let user_agent = crate::prefix(user_agent, MAX_AGENT_LEN);
        if user_agent.is_empty() {
            return Agent::default();
        }
        if let Some(agent) = self.cache.get(user_agent) {
            return agent.clone();
        }
        let agent = self.parse(user_agent);
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.clear();
        }
        self.cache.insert(user_agent.to_owned(), agent.clone());
        agent
    }

    fn parse(&self, user_agent: &str) -> Agent {
        let Some(r) = self.parser.parse(user_agent) else {
            return Agent::default();
        };
        let known = |s: &str| {
            if s == UNKNOWN {
                String::new()
            } else {
                s.to_owned()
            }
        };
        Agent {
            browser: known(r.name),
            os: known(r.os),
            device: match r.category {
                "pc" => "desktop",
                "smartphone" | "mobilephone" => "mobile",
                "crawler" => "bot",
                "appliance" => "appliance",
                _ => "",
            },
        }
    }
}
