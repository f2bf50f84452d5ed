//! From an `owntracks.>` envelope to a state-machine input.

use shared::envelope::Envelope;
use shared::limits::{MAX_REGIONS_PER_DEVICE, MAX_TID_BYTES, MAX_TOPIC_LEVEL_BYTES, truncate_utf8};
use shared::owntracks::{Message, MessageType};
use shared::state::RegionDef;

use crate::machine::{DeviceInput, Input, bounded};

/// Why an envelope cannot be used: the message is terminated, not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Poison(pub(crate) String);

/// The input an envelope means; `None` for kinds that do not affect presence.
///
/// OWNTRACKS is open to any producer, so nothing is assumed of an envelope:
/// an over-long identity is poison (cutting it could merge two devices), and
/// over-long names and lists are cut to `shared::limits` (see
/// [`bounded`]) before they can reach stored state.
pub(crate) fn from_envelope(
    envelope: Envelope,
    source_id: String,
) -> Result<Option<DeviceInput>, Poison> {
    for (level, value) in [
        ("household", &envelope.household),
        ("user", &envelope.user),
        ("device", &envelope.device),
    ] {
        if value.len() > MAX_TOPIC_LEVEL_BYTES || value.is_empty() {
            return Err(Poison(format!(
                "{level} of {} bytes (1 to {MAX_TOPIC_LEVEL_BYTES} allowed)",
                value.len()
            )));
        }
    }
    let kind = MessageType::ALL
        .into_iter()
        .find(|k| k.as_str() == envelope.kind())
        .ok_or_else(|| Poison(format!("unknown _type {:?}", envelope.kind())))?;
    let message = Message {
        kind,
        body: envelope.message,
    };
    let missing = || Poison(format!("{} without its required fields", kind.as_str()));
    let input = match kind {
        MessageType::Location => {
            let l = message.location().ok_or_else(missing)?;
            Input::Location {
                tst: l.tst,
                tid: l.tid.map(|t| truncate_utf8(&t, MAX_TID_BYTES).to_string()),
                lat: l.lat,
                lon: l.lon,
                acc: l.acc,
                vel: l.vel,
                batt: l.batt,
                // Cut before `bounded` looks at each entry: one message
                // cannot cost more than a bounded amount of work.
                inregions: l.inregions.map(|mut r| {
                    r.truncate(MAX_REGIONS_PER_DEVICE);
                    r
                }),
            }
        }
        MessageType::Transition => {
            let t = message.transition().ok_or_else(missing)?;
            let Some(region) = t.desc.filter(|d| !d.is_empty()).or(t.rid) else {
                return Err(Poison("transition without a region name".into()));
            };
            Input::Transition {
                tst: t.tst,
                event: t.event,
                region,
                acc: t.acc,
            }
        }
        MessageType::Lwt => Input::Lwt {
            tst: message.lwt().and_then(|l| l.tst),
        },
        MessageType::Waypoints => Input::Waypoints {
            regions: message
                .waypoints()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|w| {
                    Some(RegionDef {
                        name: w.desc,
                        lat: w.lat,
                        lon: w.lon,
                        radius: w.rad.filter(|r| *r > 0.0)?,
                    })
                })
                .take(MAX_REGIONS_PER_DEVICE)
                .collect(),
        },
        MessageType::Card => Input::Card {
            name: message.card().and_then(|c| c.name),
        },
        // A single waypoint is an edit of one region, not the whole list:
        // the next `waypoints` export brings it in.
        _ => return Ok(None),
    };
    Ok(Some(bounded(&DeviceInput {
        household: envelope.household,
        user: envelope.user,
        device: envelope.device,
        received_at: envelope.received_at,
        source_id,
        retained: envelope.retained,
        input,
    })))
}
