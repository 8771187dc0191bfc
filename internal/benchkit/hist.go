package benchkit

import (
	"math"
	"math/bits"
	"time"
)

// Latencies are kept in a log-linear histogram: exact below 128ns, then 64
// buckets per power of two, so a quantile is within 1/64 (1.6%) of the true
// value whatever the number of operations, in constant memory.
const (
	histExact = 128 // values below are their own bucket
	histSub   = 64  // buckets per power of two above
	histSize  = histExact + (64-7)*histSub
)

// histogram counts durations. The zero value is empty and ready to use. It is
// not safe for concurrent use.
type histogram struct {
	counts [histSize]uint64
	n      uint64
	sum    time.Duration
}

func histIndex(ns uint64) int {
	if ns < histExact {
		return int(ns)
	}
	e := bits.Len64(ns) - 7 // ns>>e is in [64, 127]
	return histExact + (e-1)*histSub + int(ns>>e) - histSub
}

// histMid is the middle of bucket i.
func histMid(i int) time.Duration {
	if i < histExact {
		return time.Duration(i)
	}
	e := (i-histExact)/histSub + 1
	lo := uint64(histSub+(i-histExact)%histSub) << e
	return time.Duration(lo + (uint64(1)<<e)/2)
}

func (h *histogram) add(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[histIndex(uint64(d))]++
	h.n++
	h.sum += d
}

// merge adds o's counts to h.
func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
}

// mean is the exact mean, 0 when empty.
func (h *histogram) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// quantile returns the q-quantile (0 < q <= 1) by the nearest-rank method,
// 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return histMid(i)
		}
	}
	return histMid(histSize - 1)
}
