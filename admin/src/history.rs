//! `history` (a person's places over time) and `tail` (events as they
//! come), from the PRESENCE stream.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use shared::config::Config;
use shared::state::{EventKind, PresenceEvent};
use shared::subjects::{PRESENCE_STREAM, presence, presence_household};
use shared::token::encode;
use time::OffsetDateTime;

use crate::nats::{From, Nats};
use crate::{print_json, rfc3339, table};

/// One stay: a place from a time to the next place change (None: still).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Span {
    pub(crate) place: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) to: Option<OffsetDateTime>,
}

/// The stays of one person's events, in order: each place event begins a
/// stay that the next one ends.
pub(crate) fn timeline<'a>(events: impl IntoIterator<Item = &'a PresenceEvent>) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for event in events {
        let (EventKind::Place, Some(place)) = (event.kind, &event.place) else {
            continue;
        };
        if let Some(last) = spans.last_mut() {
            last.to = Some(event.at);
        }
        spans.push(Span {
            place: place.clone(),
            from: event.at,
            to: None,
        });
    }
    spans
}

/// The stays overlapping `[start, end)`, cut to it.
fn clip(spans: Vec<Span>, start: OffsetDateTime, end: OffsetDateTime) -> Vec<Span> {
    spans
        .into_iter()
        .filter(|s| s.from < end && s.to.is_none_or(|to| to > start))
        .map(|s| Span {
            from: s.from.max(start),
            to: match s.to {
                Some(to) => Some(to.min(end)),
                None if end <= OffsetDateTime::now_utc() => Some(end),
                None => None,
            },
            place: s.place,
        })
        .collect()
}

/// `[start, end)` of `day` (`today`, `yesterday`, `YYYY-MM-DD`) in `tz`.
fn day_range(
    day: &str,
    tz: &jiff::tz::TimeZone,
) -> anyhow::Result<(OffsetDateTime, OffsetDateTime)> {
    let today = jiff::Timestamp::now().to_zoned(tz.clone()).date();
    let date = match day {
        "today" => today,
        "yesterday" => today.yesterday()?,
        other => other
            .parse::<jiff::civil::Date>()
            .with_context(|| format!("--day {other:?}: want today, yesterday or YYYY-MM-DD"))?,
    };
    let at = |d: jiff::civil::Date| -> anyhow::Result<OffsetDateTime> {
        let second = d.to_zoned(tz.clone())?.timestamp().as_second();
        Ok(OffsetDateTime::from_unix_timestamp(second)?)
    };
    Ok((at(date)?, at(date.tomorrow()?)?))
}

/// A time as the household reads it.
fn local(t: OffsetDateTime, tz: &jiff::tz::TimeZone) -> String {
    jiff::Timestamp::from_second(t.unix_timestamp())
        .map(|ts| {
            ts.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339(t))
}

pub(crate) async fn history(
    nats: &Nats,
    config: &Config,
    person: &str,
    household: Option<String>,
    day: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let filter = match &household {
        Some(h) => presence(h, person),
        None => format!("presence.*.{}", encode(person)),
    };
    let messages = nats
        .read_stream(PRESENCE_STREAM, vec![filter], From::Start, |_| true)
        .await?;
    let events = messages
        .iter()
        .map(|m| serde_json::from_slice::<PresenceEvent>(&m.payload))
        .collect::<Result<Vec<_>, _>>()
        .context("decoding a presence event")?;
    let mut households: Vec<&str> = events.iter().map(|e| e.household.as_str()).collect();
    households.dedup();
    let household = match (household.as_deref(), households.as_slice()) {
        (Some(h), _) => h.to_string(),
        (None, [h]) => h.to_string(),
        (None, []) => bail!("no events of {person:?} (is the person id right?)"),
        (None, many) => bail!("{person:?} is in several households ({many:?}): give --household"),
    };
    let tz = config
        .households
        .get(&household)
        .map(|h| h.tz())
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let mut spans = timeline(&events);
    if let Some(day) = &day {
        let (start, end) = day_range(day, &tz)?;
        spans = clip(spans, start, end);
    }
    if json {
        return print_json(&serde_json::json!({
            "household": household,
            "person": person,
            "time_zone": tz.iana_name().unwrap_or("UTC"),
            "timeline": spans,
        }));
    }
    let rows = spans
        .iter()
        .map(|s| {
            vec![
                s.place.clone(),
                local(s.from, &tz),
                s.to.map(|t| local(t, &tz)).unwrap_or_else(|| "now".into()),
            ]
        })
        .collect::<Vec<_>>();
    table::print(&["PLACE", "FROM", "TO"], &rows);
    Ok(())
}

/// One event as a line of text.
fn describe(e: &PresenceEvent) -> String {
    let what = match e.kind {
        EventKind::Place => format!(
            "place {} (was {})",
            e.place.as_deref().unwrap_or("?"),
            e.previous_place.as_deref().unwrap_or("-")
        ),
        EventKind::Status => format!(
            "status {} (was {})",
            e.status.map(|s| s.as_str()).unwrap_or("?"),
            e.previous_status.map(|s| s.as_str()).unwrap_or("-")
        ),
        EventKind::Region => format!(
            "region {} {}",
            e.event
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            e.region.as_deref().unwrap_or("?")
        ),
    };
    let late = if e.late { " (late)" } else { "" };
    format!(
        "{} {}/{} {what}{late}",
        rfc3339(e.at),
        e.household,
        e.person
    )
}

pub(crate) async fn tail(
    nats: &Nats,
    household: Option<String>,
    since: Option<Duration>,
    count: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let filters = household.iter().map(|h| presence_household(h)).collect();
    let from = match since {
        Some(ago) => From::Time(OffsetDateTime::now_utc() - ago),
        None => From::New,
    };
    let consumer = nats.consumer(PRESENCE_STREAM, filters, from).await?;
    let mut messages = consumer.messages().await.context("reading PRESENCE")?;
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let Some(message) = messages.next().await else {
            bail!("the PRESENCE consumer ended");
        };
        let message = message.context("reading PRESENCE")?;
        let event: PresenceEvent =
            serde_json::from_slice(&message.payload).context("decoding a presence event")?;
        if json {
            println!("{}", serde_json::to_string(&event)?);
        } else {
            println!("{}", describe(&event));
        }
        seen += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_read_in_the_household_time_zone() {
        let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
        let (start, end) = day_range("2026-07-04", &tz).unwrap();
        assert_eq!(rfc3339(start), "2026-07-04T04:00:00Z");
        assert_eq!(rfc3339(end), "2026-07-05T04:00:00Z");
        // A day of 23 hours: summer time begins.
        let london = jiff::tz::TimeZone::get("Europe/London").unwrap();
        let (start, end) = day_range("2026-03-29", &london).unwrap();
        assert_eq!((end - start).whole_hours(), 23);
        assert!(day_range("29/03/2026", &london).is_err());
    }

    #[test]
    fn stays_are_cut_to_the_day() {
        let t = |h: i64| OffsetDateTime::from_unix_timestamp(1_780_000_000 + h * 3600).unwrap();
        let spans = vec![
            Span {
                place: "Home".into(),
                from: t(-5),
                to: Some(t(2)),
            },
            Span {
                place: "Work".into(),
                from: t(2),
                to: Some(t(30)),
            },
        ];
        let day = clip(spans, t(0), t(24));
        assert_eq!(day[0].from, t(0), "the night before starts at midnight");
        assert_eq!(day[1].to, Some(t(24)));
        assert_eq!(clip(day, t(24), t(48)), Vec::new());
    }
}
