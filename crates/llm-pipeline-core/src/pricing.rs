//! Pricing in exact integer arithmetic.
//!
//! Livepeer prices a job as `units × price_per_unit / pixels_per_unit`, where for the `llm`
//! pipeline the units are the request's `max_tokens`. We keep that rule for the quote made before
//! generation, and add the charge for what was actually generated (`completion_tokens`), which is
//! never above the quote. Both are exact rationals over `u128`, reduced, never floating point:
//! `price_per_unit` is usually in wei, where an `f64` silently loses precision.

use std::fmt;

use serde::{Deserialize, Serialize};

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
