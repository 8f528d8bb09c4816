//! How much of an engine's time connection attempts may take.
//!
//! A client's first Initial costs the engine a key derivation and a
//! decryption (a few microseconds) before it is known to be garbage, and a
//! flood of full-size garbage Initials from spoofed sources passes every
//! per-source limit. Unchecked, such a flood takes the whole engine and
//! the connections it already serves time out. So handling Initials gets
//! a share of the engine's time: a token bucket counted in nanoseconds.
//! Past it, Initials are dropped unread (and counted) until time refills
//! it. Every v1 Initial counts, not just those to CIDs we did not issue:
//! an Initial to a dead CID of ours costs as much, and any client can
//! learn one, so a handshake's later Initials (its second flight, its
//! retransmissions) count as well: during a flood, handshakes under way
//! wait with the new ones. Established connections (short headers) never
//! wait for it.
//!
//! Accepting an attempt whose packet then fails to decrypt (garbage that
//! got that far) is charged too. What a successful acceptance costs (the
//! TLS handshake, the bulk of a real handshake's work) is not: charged, it
//! capped handshakes at a quarter of the engine (a third of quinn's rate
//! in the handshake benchmark). Real Initials are what such work needs,
//! and spoofed real ones are what Retry (`RetryPolicy::WhenBusy`) answers
//! statelessly.

use std::time::{Duration, Instant};

/// The share of the engine's time Initials may take, as a divisor of
/// elapsed time.
const SHARE_DIVISOR: u32 = 4;
/// The most credit that builds up while idle (a burst of a few thousand
/// Initials), and the most debt.
const MAX_CREDIT: Duration = Duration::from_millis(10);
/// The most one Initial (or one failed acceptance) is charged: time
/// measured on the wall clock includes time the thread was preempted,
/// which is not the attempt's doing.
const MAX_CHARGE: Duration = Duration::from_millis(1);

/// What one Initial's (or acceptance's) measured time is charged.
pub(crate) fn chargeable(spent: Duration) -> Duration {
    spent.min(MAX_CHARGE)
}

/// Whether `datagram` starts with a QUIC v1 Initial packet.
pub(crate) fn is_initial(datagram: &[u8]) -> bool {
    // Long header, type Initial (RFC 9000 17.2.2), version 1.
    datagram.len() >= 5 && datagram[0] & 0xb0 == 0x80 && datagram[1..5] == [0, 0, 0, 1]
}

pub(crate) struct InitialBudget {
    /// Nanoseconds left to spend; negative after an expensive Initial.
    credit_ns: i64,
    refilled: Instant,
}

impl InitialBudget {
    pub fn new(now: Instant) -> Self {
        Self {
            credit_ns: MAX_CREDIT.as_nanos() as i64,
            refilled: now,
        }
    }

    /// Whether an Initial may be handled at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        let earned =
            (now.saturating_duration_since(self.refilled) / SHARE_DIVISOR).min(MAX_CREDIT * 2);
        self.refilled = self.refilled.max(now);
        self.credit_ns =
            (self.credit_ns + earned.as_nanos() as i64).min(MAX_CREDIT.as_nanos() as i64);
        self.credit_ns > 0
    }

    /// Runs `handle` for a datagram, charging its time if the datagram
    /// starts with an Initial (`initial`, see `is_initial`); returns false,
    /// without running it, if it does and Initials have used up their
    /// share (the datagram is shed).
    pub fn handle(&mut self, now: Instant, initial: bool, handle: impl FnOnce()) -> bool {
        if !initial {
            handle();
        } else if self.allows(now) {
            let start = Instant::now();
            handle();
            self.charge(start.elapsed());
        } else {
            return false;
        }
        true
    }

    /// Charges the time handling one Initial took.
    pub fn charge(&mut self, spent: Duration) {
        self.charge_total(chargeable(spent));
    }

    /// Charges time already capped per item (`chargeable`), summed.
    pub fn charge_total(&mut self, spent: Duration) {
        let spent = spent.min(MAX_CREDIT * 2).as_nanos() as i64;
        self.credit_ns = (self.credit_ns - spent).max(-(MAX_CREDIT.as_nanos() as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initials_get_a_quarter_of_the_time_after_a_burst() {
        let start = Instant::now();
        let mut budget = InitialBudget::new(start);
        let cost = Duration::from_micros(5);
        // Over one simulated second, Initials arrive back to back.
        let (mut now, mut handled) = (start, 0u32);
        while now < start + Duration::from_secs(1) {
            if budget.allows(now) {
                budget.charge(cost);
                handled += 1;
            }
            now += Duration::from_micros(1);
        }
        // A quarter of a second of work (50,000 at 5 us) plus the burst.
        let most = (Duration::from_millis(250) + MAX_CREDIT).as_micros() as u32 / 5 + 1;
        assert!((50_000..=most).contains(&handled), "{handled}");
    }

    #[test]
    fn only_initials_wait_for_the_budget() {
        let start = Instant::now();
        let mut budget = InitialBudget::new(start);
        budget.charge_total(2 * MAX_CREDIT);
        let mut ran = 0;
        assert!(budget.handle(start, false, || ran += 1), "not an Initial");
        assert!(!budget.handle(start, true, || ran += 1), "an Initial, shed");
        assert_eq!(ran, 1);
        assert!(budget.handle(start + 8 * MAX_CREDIT, true, || ran += 1));
        assert_eq!(ran, 2);
    }

    #[test]
    fn initials_are_v1_long_headers_of_type_initial() {
        let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
        initial.extend_from_slice(&[7; 30]);
        assert!(is_initial(&initial));
        let mut handshake = initial.clone();
        handshake[0] = 0xe3;
        assert!(!is_initial(&handshake));
        let mut zero_rtt = initial.clone();
        zero_rtt[0] = 0xd3;
        assert!(!is_initial(&zero_rtt));
        let mut draft = initial.clone();
        draft[4] = 2;
        assert!(!is_initial(&draft));
        assert!(!is_initial(&[0x43, 0, 0, 0, 1, 8, 1, 2]));
        assert!(!is_initial(&[0xc3, 0, 0, 0]));
    }

    #[test]
    fn a_preempted_charge_costs_at_most_a_bounded_debt() {
        let start = Instant::now();
        let mut budget = InitialBudget::new(start);
        // 50 ms of wall time, most of it preempted: charged 1 ms.
        budget.charge(Duration::from_millis(50));
        assert!(budget.allows(start));
        // Debt never exceeds MAX_CREDIT, paid back in 4 * MAX_CREDIT.
        for _ in 0..100 {
            budget.charge(MAX_CHARGE);
        }
        assert!(!budget.allows(start + 4 * MAX_CREDIT - Duration::from_micros(10)));
        assert!(budget.allows(start + 4 * MAX_CREDIT + Duration::from_micros(10)));
        // A pass's summed failed acceptances (each already capped) count
        // whole, down to the same floor.
        let later = start + 4 * MAX_CREDIT + Duration::from_micros(10);
        budget.charge_total(Duration::from_secs(1));
        assert!(!budget.allows(later + 4 * MAX_CREDIT));
        assert!(budget.allows(later + 4 * MAX_CREDIT + Duration::from_micros(20)));
        assert_eq!(chargeable(Duration::from_secs(1)), MAX_CHARGE);
    }

    #[test]
    fn idle_time_builds_only_a_bounded_burst() {
        let start = Instant::now();
        let mut budget = InitialBudget::new(start);
        let later = start + Duration::from_secs(60);
        let mut handled = 0;
        while budget.allows(later) {
            budget.charge(Duration::from_micros(100));
            handled += 1;
        }
        assert_eq!(handled, MAX_CREDIT.as_micros() / 100);
        // One slow Initial leaves a debt that time pays back first.
        assert!(budget.allows(later + Duration::from_micros(400)));
        for _ in 0..4 {
            budget.charge(Duration::from_millis(1));
        }
        assert!(!budget.allows(later + Duration::from_millis(8)));
        assert!(budget.allows(later + Duration::from_millis(20)));
    }
}
