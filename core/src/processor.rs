//! Routes a source's batches into its channels (Flume's `ChannelProcessor` + selectors).
//!
//! Each channel gets one all-or-nothing put. When a batch goes to several required channels the
//! puts happen one after another, so a failure on a later channel leaves the batch in the
//! earlier ones; the source answers "failed", its client retries, and the earlier channels see
//! the batch twice. That is Flume's replicating-selector behaviour (at-least-once).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::channel::{Channel, PutError};
use crate::event::Event;
use crate::interceptor::{intercept, Interceptor};

/// `selector = { type = "…", … }` on a source.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SelectorConfig {
    /// Every event to every channel of the source; failures on `optional` channels are ignored.
    Replicating {
        #[serde(default)]
        optional: Vec<String>,
    },
    /// Route by the value of one header; unmatched events go to `default`.
    Multiplexing {
        header: String,
        #[serde(default)]
        mapping: BTreeMap<String, Vec<String>>,
        #[serde(default)]
        optional: BTreeMap<String, Vec<String>>,
        #[serde(default)]
        default: Vec<String>,
    },
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig::Replicating {
            optional: Vec::new(),
        }
    }
}

impl SelectorConfig {
    /// Every channel name the selector mentions, for validation.
    pub fn mentioned_channels(&self) -> Vec<(String, &str)> {
        match self {
            SelectorConfig::Replicating { optional } => optional
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("selector.optional[{i}]"), c.as_str()))
                .collect(),
            SelectorConfig::Multiplexing {
                mapping,
                optional,
                default,
                ..
            } => {
                let mut out = Vec::new();
                for (key, list) in mapping {
                    for (i, c) in list.iter().enumerate() {
                        out.push((format!("selector.mapping.{key}[{i}]"), c.as_str()));
                    }
                }
                for (key, list) in optional {
                    for (i, c) in list.iter().enumerate() {
                        out.push((format!("selector.optional.{key}[{i}]"), c.as_str()));
                    }
                }
                for (i, c) in default.iter().enumerate() {
                    out.push((format!("selector.default[{i}]"), c.as_str()));
                }
                out
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Route {
    required: Vec<usize>,
    optional: Vec<usize>,
}

enum Selector {
    Replicating(Route),
    Multiplexing {
        header: String,
        routes: BTreeMap<String, Route>,
        default: Route,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("selector names channel `{0}`, which is not one of the source's channels")]
pub struct UnknownChannel(pub String);

pub struct ChannelProcessor {
    channels: Vec<Arc<dyn Channel>>,
    selector: Selector,
    interceptors: Vec<Interceptor>,
}

impl ChannelProcessor {
    /// `channels` are the source's channels in config order; the selector refers to them by name.
    pub fn new(
        channels: Vec<Arc<dyn Channel>>,
        selector: &SelectorConfig,
    ) -> Result<Self, UnknownChannel> {
        let index = |name: &str| {
            channels
                .iter()
                .position(|c| c.name() == name)
                .ok_or_else(|| UnknownChannel(name.to_string()))
        };
        let indices = |names: &[String]| {
            names
                .iter()
                .map(|n| index(n))
                .collect::<Result<Vec<_>, _>>()
        };
        let selector = match selector {
            SelectorConfig::Replicating { optional } => {
                let optional = indices(optional)?;
                let required = (0..channels.len())
                    .filter(|i| !optional.contains(i))
                    .collect();
                Selector::Replicating(Route { required, optional })
            }
            SelectorConfig::Multiplexing {
                header,
                mapping,
                optional,
                default,
            } => {
                let mut routes: BTreeMap<String, Route> = BTreeMap::new();
                for (value, names) in mapping {
                    routes.entry(value.clone()).or_default().required = indices(names)?;
                }
                for (value, names) in optional {
                    let route = routes.entry(value.clone()).or_default();
                    // A channel both required and optional counts as required (Flume).
                    route.optional = indices(names)?
                        .into_iter()
                        .filter(|i| !route.required.contains(i))
                        .collect();
                }
                Selector::Multiplexing {
                    header: header.clone(),
                    routes,
                    default: Route {
                        required: indices(default)?,
                        optional: Vec::new(),
                    },
                }
            }
        };
        Ok(ChannelProcessor {
            channels,
            selector,
            interceptors: Vec::new(),
        })
    }

    /// Interceptors applied to every batch before it is routed (in order).
    pub fn with_interceptors(mut self, interceptors: Vec<Interceptor>) -> Self {
        self.interceptors = interceptors;
        self
    }

    pub fn channels(&self) -> &[Arc<dyn Channel>] {
        &self.channels
    }

    /// Puts the batch into every channel it routes to. `Ok` means it is stored in every
    /// required channel: the source may acknowledge it.
    pub async fn put(&self, mut events: Vec<Event>) -> Result<(), PutError> {
        if events.is_empty() {
            return Ok(());
        }
        if !self.interceptors.is_empty() {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            intercept(&self.interceptors, &mut events, now_ms);
        }
        match &self.selector {
            Selector::Replicating(route) => self.put_route(route, events).await,
            Selector::Multiplexing {
                header,
                routes,
                default,
            } => {
                let mut per_channel: Vec<Vec<Event>> = vec![Vec::new(); self.channels.len()];
                let mut required = vec![false; self.channels.len()];
                for event in events {
                    let route = event
                        .headers
                        .get(header)
                        .and_then(|v| routes.get(v))
                        .unwrap_or(default);
                    for &i in &route.required {
                        required[i] = true;
                    }
                    let targets: Vec<usize> = route
                        .required
                        .iter()
                        .chain(&route.optional)
                        .copied()
                        .collect();
                    if let Some((&last, rest)) = targets.split_last() {
                        for &i in rest {
                            per_channel[i].push(event.clone());
                        }
                        per_channel[last].push(event);
                    }
                }
                for (i, batch) in per_channel.into_iter().enumerate() {
                    if batch.is_empty() {
                        continue;
                    }
                    self.put_one(i, batch, required[i]).await?;
                }
                Ok(())
            }
        }
    }

    async fn put_route(&self, route: &Route, events: Vec<Event>) -> Result<(), PutError> {
        let targets: Vec<(usize, bool)> = route
            .required
            .iter()
            .map(|&i| (i, true))
            .chain(route.optional.iter().map(|&i| (i, false)))
            .collect();
        let Some((&(last, last_required), rest)) = targets.split_last() else {
            return Ok(());
        };
        for &(i, req) in rest {
            self.put_one(i, events.clone(), req).await?;
        }
        self.put_one(last, events, last_required).await
    }

    async fn put_one(&self, i: usize, batch: Vec<Event>, required: bool) -> Result<(), PutError> {
        let channel = &self.channels[i];
        match channel.put(batch).await {
            Ok(()) => Ok(()),
            Err(e) if !required => {
                tracing::debug!(channel = channel.name(), error = %e, "put to optional channel failed; ignored");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryChannel, MemoryChannelConfig};

    fn mem(name: &str, max: u64) -> Arc<MemoryChannel> {
        Arc::new(MemoryChannel::new(
            name,
            MemoryChannelConfig {
                max_events: max,
                ..Default::default()
            },
        ))
    }

    #[tokio::test]
    async fn replicating_puts_everywhere_and_ignores_optional_failures() {
        let (a, b, c) = (mem("a", 10), mem("b", 10), mem("c", 1));
        let p = ChannelProcessor::new(
            vec![a.clone(), b.clone(), c.clone()],
            &SelectorConfig::Replicating {
                optional: vec!["c".into()],
            },
        )
        .unwrap();
        p.put(vec![Event::new("x"), Event::new("y")]).await.unwrap();
        assert_eq!(a.stats().events, 2);
        assert_eq!(b.stats().events, 2);
        assert_eq!(
            c.stats().events,
            0,
            "optional channel was too small, ignored"
        );
        let full = mem("full", 1);
        let p = ChannelProcessor::new(vec![full], &SelectorConfig::default()).unwrap();
        assert!(p
            .put(vec![Event::new("1"), Event::new("2")])
            .await
            .unwrap_err()
            .is_full());
    }

    #[tokio::test]
    async fn multiplexing_routes_by_header_with_default() {
        let (eu, us, other) = (mem("eu", 10), mem("us", 10), mem("other", 10));
        let cfg: SelectorConfig = toml::from_str(
            r#"
            type = "multiplexing"
            header = "region"
            mapping = { eu = ["eu"], us = ["us", "eu"] }
            default = ["other"]
            "#,
        )
        .unwrap();
        let p = ChannelProcessor::new(vec![eu.clone(), us.clone(), other.clone()], &cfg).unwrap();
        p.put(vec![
            Event::new("1").with_header("region", "eu"),
            Event::new("2").with_header("region", "us"),
            Event::new("3"),
        ])
        .await
        .unwrap();
        assert_eq!(
            (eu.stats().events, us.stats().events, other.stats().events),
            (2, 1, 1)
        );
    }

    #[test]
    fn unknown_channel_in_selector_is_an_error() {
        let cfg = SelectorConfig::Replicating {
            optional: vec!["nope".into()],
        };
        assert!(ChannelProcessor::new(vec![mem("a", 1)], &cfg).is_err());
    }
}
