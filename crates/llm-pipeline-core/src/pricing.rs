//! Pricing in exact integer arithmetic.
//!
//! Livepeer prices a job as `units × price_per_unit / pixels_per_unit`, where for the `llm`
//! pipeline the units are the request's `max_tokens`. We keep that rule for the quote made before
//! generation, and add the charge for what was actually generated (`completion_tokens`), which is
//! never above the quote. Both are exact rationals over `u128`, reduced, never floating point:
//! `price_per_unit` is usually in wei, where an `f64` silently loses precision.
//!
//! A [`Price`] goes over the wire as a JSON string, `"123"` when whole and `"123/4"` otherwise
//! (always reduced), because a JSON number cannot carry a `u128` rational exactly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// A non-negative exact rational amount of the price currency (e.g. wei), kept reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Price {
    numerator: u128,
    denominator: u128,
}

impl Price {
    /// Zero.
    pub const ZERO: Self = Self {
        numerator: 0,
        denominator: 1,
    };

    /// `numerator / denominator`, reduced.
    ///
    /// # Errors
    /// [`Error::Config`] if `denominator` is zero.
    pub fn new(numerator: u128, denominator: u128) -> Result<Self> {
        if denominator == 0 {
            return Err(Error::Config {
                variable: "PIXELS_PER_UNIT",
                message: "must be at least 1".into(),
            });
        }
        let g = gcd(numerator, denominator);
        Ok(Self {
            numerator: numerator / g,
            denominator: denominator / g,
        })
    }

    /// The numerator of the reduced fraction.
    pub fn numerator(&self) -> u128 {
        self.numerator
    }

    /// The denominator of the reduced fraction (at least 1).
    pub fn denominator(&self) -> u128 {
        self.denominator
    }

    /// The amount rounded up to a whole unit of currency (what a payment must cover).
    pub fn ceil(&self) -> u128 {
        self.numerator.div_ceil(self.denominator)
    }

    /// The exact sum `self + other`, reduced, or `None` if it does not fit in `u128`.
    ///
    /// ```
    /// # use llm_pipeline_core::pricing::Price;
    /// let third = Price::new(1, 3)?;
    /// let sixth = Price::new(1, 6)?;
    /// assert_eq!(third.checked_add(sixth), Some(Price::new(1, 2)?));
    /// assert_eq!(Price::new(u128::MAX, 1)?.checked_add(third), None);
    /// # Ok::<(), llm_pipeline_core::Error>(())
    /// ```
    pub fn checked_add(self, other: Self) -> Option<Self> {
        // Knuth's form (TAOCP 4.5.1): with g = gcd(d1, d2) and t = n1·(d2/g) + n2·(d1/g),
        // gcd(t, d1·d2/g) = gcd(t, g), so the reduced sum is t/g2 over (d1/g)·(d2/g2) and no
        // intermediate grows beyond what the result itself needs.
        let g = gcd(self.denominator, other.denominator);
        let left = self.numerator.checked_mul(other.denominator / g)?;
        let right = other.numerator.checked_mul(self.denominator / g)?;
        let t = left.checked_add(right)?;
        let g2 = gcd(t, g);
        Some(Self {
            numerator: t / g2,
            denominator: (self.denominator / g).checked_mul(other.denominator / g2)?,
        })
    }
}

impl fmt::Display for Price {
    /// `"123"` when whole, `"123/4"` otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.denominator == 1 {
            write!(f, "{}", self.numerator)
        } else {
            write!(f, "{}/{}", self.numerator, self.denominator)
        }
    }
}

impl FromStr for Price {
    type Err = Error;

    /// Parses `"123"` or `"123/4"` (decimal digits only; the fraction need not be reduced).
    ///
    /// # Errors
    /// [`Error::Validation`] for `price` if the text is not of that form, a part does not fit in
    /// `u128`, or the denominator is zero.
    fn from_str(text: &str) -> Result<Self> {
        let invalid = || {
            Error::validation(
                "price",
                format!("expected `N` or `N/D` with decimal N and non-zero D, got `{text}`"),
            )
        };
        let digits = |part: &str| -> Result<u128> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            part.parse().map_err(|_| invalid())
        };
        let (numerator, denominator) = match text.split_once('/') {
            Some((n, d)) => (digits(n)?, digits(d)?),
            None => (digits(text)?, 1),
        };
        if denominator == 0 {
            return Err(invalid());
        }
        Self::new(numerator, denominator)
    }
}

impl Serialize for Price {
    /// As the string [`Display`](fmt::Display) writes.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Price {
    /// From a string that [`FromStr`] accepts.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// The price list: `price_per_unit` for every `pixels_per_unit` tokens (Livepeer's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTable {
    /// Price per unit, in the smallest currency unit (wei).
    pub price_per_unit: u64,
    /// How many tokens one unit covers (at least 1).
    pub pixels_per_unit: u64,
}

impl Default for PriceTable {
    /// Free: 0 per 1 token.
    fn default() -> Self {
        Self {
            price_per_unit: 0,
            pixels_per_unit: 1,
        }
    }
}

impl PriceTable {
    /// The price of `tokens` tokens.
    pub fn price(&self, tokens: u64) -> Price {
        let numerator = u128::from(tokens) * u128::from(self.price_per_unit);
        // `pixels_per_unit` is validated non-zero by the config; treat zero as one to stay total.
        Price::new(numerator, u128::from(self.pixels_per_unit.max(1))).unwrap_or(Price::ZERO)
    }

    /// Livepeer's quote before generation: the request's `max_tokens` at this price.
    pub fn quote(&self, max_tokens: u32) -> Price {
        self.price(u64::from(max_tokens))
    }

    /// The charge after generation: the completion tokens actually produced.
    pub fn charge(&self, completion_tokens: u32) -> Price {
        self.price(u64::from(completion_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_is_exact_and_reduced() {
        let t = PriceTable {
            price_per_unit: 1_000_000_000_000_000_007,
            pixels_per_unit: 3,
        };
        let q = t.quote(256);
        assert_eq!(q.numerator(), 256 * 1_000_000_000_000_000_007u128);
        assert_eq!(q.denominator(), 3);
        assert_eq!(q.to_string(), "256000000000000001792/3");
        assert_eq!(q.ceil(), 85_333_333_333_333_333_931);
    }

    #[test]
    fn charge_never_exceeds_quote_and_reduces() {
        let t = PriceTable {
            price_per_unit: 10,
            pixels_per_unit: 4,
        };
        assert_eq!(t.charge(6).to_string(), "15");
        assert_eq!(t.charge(7).to_string(), "35/2");
        assert!(
            t.charge(7).numerator() * t.quote(8).denominator()
                <= t.quote(8).numerator() * t.charge(7).denominator()
        );
    }

    #[test]
    fn free_by_default_and_zero_denominator_refused() {
        assert_eq!(PriceTable::default().quote(100), Price::ZERO);
        assert!(Price::new(1, 0).is_err());
    }

    #[test]
    fn prices_add_exactly_and_reduced() {
        let p = |n, d| Price::new(n, d).unwrap();
        let sum = [p(1, 3), p(1, 6), p(2, 1)]
            .into_iter()
            .try_fold(Price::ZERO, Price::checked_add);
        assert_eq!(sum, Some(p(5, 2)));
        assert_eq!(p(1, 4).checked_add(p(3, 4)), Some(p(1, 1)));
        assert_eq!(p(0, 1).checked_add(p(7, 9)), Some(p(7, 9)));
        // Equal large denominators add without forming their product.
        let big = u128::MAX / 3;
        assert_eq!(
            p(1, big).checked_add(p(1, big)).map(|s| s.to_string()),
            Some(format!("2/{big}"))
        );
    }

    #[test]
    fn price_sum_overflow_is_none() {
        let p = |n, d| Price::new(n, d).unwrap();
        assert_eq!(p(u128::MAX, 1).checked_add(p(1, 1)), None);
        assert_eq!(p(u128::MAX, 1).checked_add(p(1, 2)), None);
        // Small numerators, but the reduced denominator 2^70·(2^70 − 1) does not fit.
        assert_eq!(p(1, 1 << 70).checked_add(p(1, (1 << 70) - 1)), None);
        assert_eq!(
            p(u128::MAX, 1).checked_add(Price::ZERO),
            Some(p(u128::MAX, 1))
        );
    }

    #[test]
    fn parses_what_it_displays() {
        for text in ["0", "15", "35/2", "256000000000000001792/3"] {
            let price: Price = text.parse().unwrap();
            assert_eq!(price.to_string(), text);
        }
        assert_eq!("4/2".parse::<Price>().unwrap().to_string(), "2");
        for bad in ["", "x", "1/", "/2", "1/0", "-1", "+1", " 1", "1/2/3", "1.5"] {
            assert!(bad.parse::<Price>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn serializes_as_the_display_string() {
        let price = Price::new(123, 4).unwrap();
        assert_eq!(serde_json::to_string(&price).unwrap(), r#""123/4""#);
        assert_eq!(serde_json::to_string(&Price::ZERO).unwrap(), r#""0""#);
        assert_eq!(serde_json::from_str::<Price>(r#""246/8""#).unwrap(), price);
        assert!(serde_json::from_str::<Price>("123").is_err());
        assert!(serde_json::from_str::<Price>(r#""1/0""#).is_err());
    }

    #[test]
    fn no_overflow_at_the_extremes() {
        let t = PriceTable {
            price_per_unit: u64::MAX,
            pixels_per_unit: 1,
        };
        assert_eq!(
            t.quote(u32::MAX).numerator(),
            u128::from(u64::MAX) * u128::from(u32::MAX)
        );
    }
}
