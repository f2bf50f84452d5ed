//! `export`: the OWNTRACKS envelopes of a household, or of one person's
//! devices, over a time range, one JSON document a line (the input of
//! `what-if`).

use std::io::Write;

use anyhow::Context;
use shared::config::Config;
use shared::subjects::OWNTRACKS_STREAM;
use shared::token::encode;
use time::OffsetDateTime;

use crate::nats::{From, Nats};

/// Receive times (the stream's) from `since` to `until`, both included.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

impl Range {
    pub(crate) fn parse(since: Option<&str>, until: Option<&str>) -> anyhow::Result<Range> {
        let now = OffsetDateTime::now_utc();
        let at = |text: &str| -> anyhow::Result<OffsetDateTime> {
            if let Ok(t) =
                OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            {
                return Ok(t);
            }
            let ago = humantime::parse_duration(text).with_context(|| {
                format!("{text:?}: want an RFC 3339 time or a duration ago (`24h`)")
            })?;
            Ok(now - ago)
        };
        Ok(Range {
            since: since.map(at).transpose()?,
            until: until.map(at).transpose()?,
        })
    }
}

/// The subjects of a person's devices (by the config; a person it does
/// not know is taken as an unmapped user of that name), or the household's.
fn filters(config: &Config, household: &str, person: Option<&str>) -> Vec<String> {
    let h = encode(household);
    let Some(person) = person else {
        return vec![format!("owntracks.{h}.>")];
    };
    let configured = config
        .households
        .get(household)
        .and_then(|c| c.person(person));
    match configured {
        Some(p) => p
            .devices
            .iter()
            .filter_map(|d| d.split_once('/'))
            .map(|(user, device)| format!("owntracks.{h}.{}.{}.>", encode(user), encode(device)))
            .collect(),
        None => vec![format!("owntracks.{h}.{}.>", encode(person))],
    }
}

pub(crate) async fn run(
    nats: &Nats,
    config: &Config,
    household: &str,
    person: Option<&str>,
    range: Range,
) -> anyhow::Result<()> {
    let filters = filters(config, household, person);
    anyhow::ensure!(
        !filters.is_empty(),
        "{person:?} has no devices in the config"
    );
    let from = range.since.map_or(From::Start, From::Time);
    let until = range.until;
    let messages = nats
        .read_stream(OWNTRACKS_STREAM, filters, from, |m| {
            let published = m.info().map(|i| i.published).ok();
            until.is_none_or(|until| published.is_none_or(|p| p <= until))
        })
        .await?;
    let mut out = std::io::stdout().lock();
    for message in messages {
        out.write_all(&message.payload)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
