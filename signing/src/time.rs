//! Wall-clock instants in UTC, as RFC 3339 text, for expiry checks. Kept
//! to seconds since the Unix epoch; no time zone database needed.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Seconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The system clock now.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Timestamp(secs)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl FromStr for Timestamp {
    type Err = Error;

    /// RFC 3339 with an offset: `2027-01-31T12:00:00Z`, `...+02:00`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::malformed(
                "time",
                format!("'{s}': {why}; expected RFC 3339 such as 2027-01-31T00:00:00Z"),
            )
        };
        let dt: toml::value::Datetime = s.parse().map_err(|_| bad("not a date-time"))?;
        let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
            return Err(bad("date, time and offset (Z or ±HH:MM) are all required"));
        };
        let offset_minutes = match offset {
            toml::value::Offset::Z => 0,
            toml::value::Offset::Custom { minutes } => i64::from(minutes),
        };
        let days = days_from_civil(
            i64::from(date.year),
            i64::from(date.month),
            i64::from(date.day),
        );
        let secs = days * 86_400
            + i64::from(time.hour) * 3600
            + i64::from(time.minute) * 60
            + i64::from(time.second)
            - offset_minutes * 60;
        Ok(Timestamp(secs))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, rem) = (self.0.div_euclid(86_400), self.0.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn round_trips_and_offsets() {
        let t: Timestamp = "2026-11-25T14:33:20Z".parse().unwrap();
        assert_eq!(t.0, 1_795_617_200);
        assert_eq!(t.to_string(), "2026-11-25T14:33:20Z");
        let shifted: Timestamp = "2026-11-25T16:33:20+02:00".parse().unwrap();
        assert_eq!(shifted, t);
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert!("2026-11-25".parse::<Timestamp>().is_err());
    }
}
