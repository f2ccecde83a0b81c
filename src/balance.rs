//! Model-level balancing: the order in which a model's targets get a request (contract §2
//! `balance`).
//!
//! Used by the route step (`routing::Router::plan`) once per request and model. Endpoints
//! *within* a provider are picked by Pingora's `LoadBalancer` (`upstream::ProviderUpstream`);
//! targets are not socket addresses, and Pingora's selection has no least-pending or latency
//! algorithm, so this small module orders them. Every strategy returns a full order over the
//! available targets: the first gets the request, the rest are where it falls back to.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::config::Balance;

/// What the balancer knows about one target at the moment of the decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Configured weight (at least 1).
    pub weight: u32,
    /// Requests in flight on the target's endpoints.
    pub in_flight: usize,
    /// Smoothed time to response header in µs; 0 while unknown.
    pub latency_us: u64,
    /// Whether any endpoint may take an attempt (healthy and not cooling down).
    pub available: bool,
    /// A stable identity of the target, for affinity hashing (0 when none is asked).
    pub id: u64,
}

/// Orders the available targets for one request. `tick` is the model's request counter
/// (it rotates ties and round robin); `affinity` is the hashed client credential for
/// `hash_key`. Unavailable targets are left out: a target whose every endpoint is down or
/// cooling costs no attempt.
pub fn order(balance: Balance, loads: &[Load], tick: usize, affinity: Option<u64>) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].available).collect();
    if ids.len() < 2 {
        return ids;
    }
    let n = ids.len();
    ids.rotate_left(tick % n);
    match (balance, affinity) {
        (Balance::RoundRobin, _) | (Balance::HashKey, None) => {}
        (Balance::Weighted, _) => weighted_first(&mut ids, loads, tick),
        (Balance::LeastPending, _) => least_pending_first(&mut ids, loads, tick),
        (Balance::Latency, _) => two_choices_first(&mut ids, loads, tick),
        (Balance::HashKey, Some(key)) => {
            ids.sort_by_key(|&i| std::cmp::Reverse(rendezvous(key, loads[i].id)));
        }
    }
    ids
}

/// Smooth enough and exact: over every `sum(weights)` consecutive requests each target is
/// first exactly `weight` times (the cumulative-weight walk Pingora's `Weighted` does with a
/// round-robin index). The others follow in rotation as fallbacks.
fn weighted_first(ids: &mut [usize], loads: &[Load], tick: usize) {
    // Walk in configuration order so the pattern does not depend on the rotation.
    ids.sort_unstable();
    let total: u64 = ids.iter().map(|&i| u64::from(loads[i].weight.max(1))).sum();
    let mut point = tick as u64 % total.max(1);
    let mut first = 0;
    for (pos, &i) in ids.iter().enumerate() {
        let w = u64::from(loads[i].weight.max(1));
        if point < w {
            first = pos;
            break;
        }
        point -= w;
    }
    ids.rotate_left(first);
}

/// Fewest in flight first; among the equally idle, the first place rotates so they share.
fn least_pending_first(ids: &mut [usize], loads: &[Load], tick: usize) {
    ids.sort_unstable_by_key(|&i| (loads[i].in_flight, i));
    let least = loads[ids[0]].in_flight;
    let ties = ids
        .iter()
        .take_while(|&&i| loads[i].in_flight == least)
        .count();
    ids[..ties].rotate_left(tick % ties);
}

/// Power of two choices over a cost of latency × (in flight + 1) ("peak EWMA", as Finagle
/// and linkerd balance): two targets drawn per request, the cheaper one first, the rest by
/// cost. Unknown latency costs 0, so a new target is tried early and gets measured.
fn two_choices_first(ids: &mut [usize], loads: &[Load], tick: usize) {
    let cost = |i: usize| {
        loads[i]
            .latency_us
            .saturating_mul(loads[i].in_flight as u64 + 1)
    };
    let n = ids.len();
    let draw = mix(tick as u64);
    let a = (draw % n as u64) as usize;
    let b = (a + 1 + ((draw >> 32) % (n as u64 - 1)) as usize) % n;
    let winner = if cost(ids[b]) < cost(ids[a]) { b } else { a };
    ids.swap(0, winner);
    ids[1..].sort_by_key(|&i| cost(i));
}

/// Highest-random-weight hashing: a key keeps its target while the target stays available,
/// and only the keys of a target that goes away move (to their second choice).
fn rendezvous(key: u64, target: u64) -> u64 {
    mix(key ^ target.rotate_left(17))
}

/// SplitMix64's finaliser: spreads consecutive counters and hashes over all 64 bits.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A stable 64-bit id for hashing (target identity, client credential). Not a security
/// hash: it only places requests, and nothing derived from it is stored or shown.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(weights: &[u32]) -> Vec<Load> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Load {
                weight: w,
                available: true,
                id: stable_hash(&[&i.to_le_bytes()]),
                ..Load::default()
            })
            .collect()
    }

    fn firsts(balance: Balance, l: &[Load], n: usize) -> Vec<usize> {
        let mut counts = vec![0; l.len()];
        for tick in 0..n {
            counts[order(balance, l, tick, None)[0]] += 1;
        }
        counts
    }

    #[test]
    fn every_strategy_lists_each_available_target_once() {
        let mut l = loads(&[1, 2, 3, 1]);
        l[2].available = false;
        for b in [
            Balance::RoundRobin,
            Balance::Weighted,
            Balance::LeastPending,
            Balance::Latency,
            Balance::HashKey,
        ] {
            for tick in 0..20 {
                let mut o = order(b, &l, tick, Some(tick as u64));
                o.sort_unstable();
                assert_eq!(o, vec![0, 1, 3], "{b:?}");
            }
        }
    }

    #[test]
    fn round_robin_is_even() {
        assert_eq!(
            firsts(Balance::RoundRobin, &loads(&[1, 1, 1]), 300),
            [100; 3]
        );
    }

    #[test]
    fn weighted_is_exact_per_cycle() {
        assert_eq!(firsts(Balance::Weighted, &loads(&[3, 1]), 400), [300, 100]);
        assert_eq!(
            firsts(Balance::Weighted, &loads(&[1, 2, 5]), 800),
            [100, 200, 500]
        );
    }

    #[test]
    fn weighted_shares_out_among_the_available_only() {
        let mut l = loads(&[3, 1, 4]);
        l[2].available = false;
        assert_eq!(firsts(Balance::Weighted, &l, 400), [300, 100, 0]);
    }

    #[test]
    fn least_pending_prefers_the_idle_and_rotates_ties() {
        let mut l = loads(&[1, 1, 1]);
        l[0].in_flight = 5;
        l[1].in_flight = 2;
        l[2].in_flight = 2;
        let c = firsts(Balance::LeastPending, &l, 100);
        assert_eq!(c[0], 0);
        assert_eq!(c[1], 50);
        assert_eq!(c[2], 50);
        assert_eq!(order(Balance::LeastPending, &l, 0, None).last(), Some(&0));
    }

    #[test]
    fn latency_sends_most_to_the_fast_and_explores_the_unknown() {
        let mut l = loads(&[1, 1, 1]);
        l[0].latency_us = 1_000;
        l[1].latency_us = 50_000;
        l[2].latency_us = 9_000;
        let c = firsts(Balance::Latency, &l, 900);
        assert!(c[0] > c[2] && c[2] > c[1], "{c:?}");
        assert_eq!(c[1], 0, "the slowest never wins a pair");
        l[1].latency_us = 0;
        let c = firsts(Balance::Latency, &l, 900);
        assert!(c[1] > 0, "an unmeasured target gets tried: {c:?}");
    }

    #[test]
    fn hash_key_is_sticky_and_spreads() {
        let l = loads(&[1, 1, 1, 1]);
        let mut counts = [0; 4];
        for key in 0..4000u64 {
            let k = stable_hash(&[&key.to_le_bytes()]);
            let first = order(Balance::HashKey, &l, 0, Some(k))[0];
            assert_eq!(order(Balance::HashKey, &l, 7, Some(k))[0], first, "sticky");
            counts[first] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn hash_key_moves_only_the_keys_of_a_lost_target() {
        let all = loads(&[1, 1, 1]);
        let mut without = all.clone();
        without[1].available = false;
        for key in 0..500u64 {
            let k = stable_hash(&[&key.to_le_bytes()]);
            let before = order(Balance::HashKey, &all, 0, Some(k))[0];
            let after = order(Balance::HashKey, &without, 0, Some(k))[0];
            if before != 1 {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn hash_key_without_a_credential_is_round_robin() {
        assert_eq!(firsts(Balance::HashKey, &loads(&[1, 1]), 100), [50, 50]);
    }
}
