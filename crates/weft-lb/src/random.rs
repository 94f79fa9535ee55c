//! Weighted random sampling of host indices.

use crate::{weight_of, HostInfo};

pub(crate) struct WeightedSampler {
    hosts: usize,
    /// `cumulative[i]` = sum of the weights of hosts `0..=i`; `None` when all weights are equal.
    cumulative: Option<Box<[u64]>>,
}

impl WeightedSampler {
    pub(crate) fn new(hosts: &[HostInfo]) -> Self {
        let uniform = hosts.windows(2).all(|w| weight_of(&w[0]) == weight_of(&w[1]));
        let cumulative = (!uniform).then(|| {
            hosts
                .iter()
                .scan(0u64, |sum, h| {
                    *sum += weight_of(h);
                    Some(*sum)
                })
                .collect()
        });
        WeightedSampler {
            hosts: hosts.len(),
            cumulative,
        }
    }

    /// A host index, each with probability weight / total weight. Requires at least one host.
    #[inline]
    pub(crate) fn sample(&self) -> usize {
        match &self.cumulative {
            None => fastrand::usize(..self.hosts),
            Some(cumulative) => {
                let total = cumulative[cumulative.len() - 1];
                let r = fastrand::u64(..total);
                cumulative.partition_point(|&c| c <= r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_cumulative_weights() {
        let hosts: Vec<HostInfo> = [1u32, 0, 2]
            .iter()
            .map(|&weight| HostInfo {
                key: String::new(),
                weight,
            })
            .collect();
        let sampler = WeightedSampler::new(&hosts);
        assert_eq!(sampler.cumulative.as_deref(), Some(&[1, 2, 4][..]));
        let mut counts = [0u32; 3];
        fastrand::seed(1);
        for _ in 0..40_000 {
            counts[sampler.sample()] += 1;
        }
        // Expected 10k, 10k, 20k.
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
        assert!((9_000..11_000).contains(&counts[1]), "{counts:?}");
        assert!((19_000..21_000).contains(&counts[2]), "{counts:?}");
    }
}
