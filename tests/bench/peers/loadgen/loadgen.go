// Package loadgen is the closed-loop load generator shared by the benchmark
// peers, so that every peer takes the same flags and prints the same JSON.
package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"
)

// Config holds the command line shared by all peers.
type Config struct {
	Dir         string
	Concurrency int
	DurationS   float64
	WarmupS     float64
	KeyBytes    int
	ValueBytes  int
	Keyspace    int
	Reads       bool
}

// RegisterFlags adds the shared flags to fs.
func RegisterFlags(fs *flag.FlagSet) *Config {
	c := &Config{}
	fs.StringVar(&c.Dir, "dir", "", "scratch directory for data dirs and logs (required)")
	fs.IntVar(&c.Concurrency, "concurrency", 1, "closed-loop workers")
	fs.Float64Var(&c.DurationS, "duration-s", 10, "measured seconds per phase")
	fs.Float64Var(&c.WarmupS, "warmup-s", 2, "unmeasured seconds before each phase")
	fs.IntVar(&c.KeyBytes, "key-bytes", 16, "key size")
	fs.IntVar(&c.ValueBytes, "value-bytes", 128, "value size")
	fs.IntVar(&c.Keyspace, "keyspace", 100000, "distinct keys")
	fs.BoolVar(&c.Reads, "reads", false, "also measure linearizable reads after the writes")
	return c
}

// Validate checks the flags after parsing.
func (c *Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("--dir is required")
	case c.Concurrency < 1:
		return errors.New("--concurrency must be >= 1")
	case c.DurationS <= 0 || c.WarmupS < 0:
		return errors.New("--duration-s must be > 0 and --warmup-s >= 0")
	case c.Keyspace < 1 || c.ValueBytes < 0:
		return errors.New("--keyspace must be >= 1 and --value-bytes >= 0")
	case len(fmt.Sprint(c.Keyspace-1)) > c.KeyBytes:
		return fmt.Errorf("--key-bytes %d too small for --keyspace %d", c.KeyBytes, c.Keyspace)
	}
	return nil
}

// Op performs one request and returns once it has completed; value is nil
// for reads.
type Op func(ctx context.Context, key, value []byte) error

// Stats is the outcome of one measured phase.
type Stats struct {
	Ops, Errors    int64
	PerS           float64
	P50, P99, P999 float64 // microseconds
}

// Run drives op from c.Concurrency workers for the warm-up and then the
// measured window. Only ops started inside the window are counted, so ops in
// flight at either edge neither inflate nor deflate the rate.
func Run(ctx context.Context, c *Config, phase string, op Op, write bool) (Stats, error) {
	keys := make([][]byte, c.Keyspace)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "%0*d", c.KeyBytes, i)
	}
	// Values are slices of one random block: incompressible, without paying
	// for a random fill on every op.
	block := make([]byte, c.ValueBytes+4096)
	for i := range block {
		block[i] = byte(rand.Uint32())
	}

	start := time.Now()
	from := start.Add(seconds(c.WarmupS))
	end := from.Add(seconds(c.DurationS))
	log.Printf("%s: %d workers, warm-up %.1fs, measuring %.1fs", phase, c.Concurrency, c.WarmupS, c.DurationS)

	lats := make([][]int64, c.Concurrency)
	errs := make([]int64, c.Concurrency)
	var wg sync.WaitGroup
	for w := range c.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				key := keys[rng.IntN(len(keys))]
				var val []byte
				if write {
					off := rng.IntN(len(block) - c.ValueBytes + 1)
					val = block[off : off+c.ValueBytes]
				}
				err := op(ctx, key, val)
				d := time.Since(t0)
				if t0.Before(from) {
					continue
				}
				if err != nil {
					if ctx.Err() == nil && errs[w] < 3 {
						log.Printf("%s: worker %d: %v", phase, w, err)
					}
					errs[w]++
					continue
				}
				lats[w] = append(lats[w], d.Nanoseconds())
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}

	all := slices.Concat(lats...)
	slices.Sort(all)
	s := Stats{Ops: int64(len(all)), PerS: float64(len(all)) / c.DurationS}
	for _, e := range errs {
		s.Errors += e
	}
	if s.Ops == 0 {
		return s, fmt.Errorf("%s: no op succeeded (%d errors)", phase, s.Errors)
	}
	s.P50, s.P99, s.P999 = quantile(all, 0.50), quantile(all, 0.99), quantile(all, 0.999)
	log.Printf("%s: %d ops (%.1f/s), %d errors, p50 %.0fus p99 %.0fus p99.9 %.0fus",
		phase, s.Ops, s.PerS, s.Errors, s.P50, s.P99, s.P999)
	return s, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// quantile uses the nearest-rank method on sorted nanoseconds and returns
// microseconds.
func quantile(sorted []int64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return round1(float64(sorted[max(i, 0)]) / 1e3)
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }

type result struct {
	System      string   `json:"system"`
	Concurrency int      `json:"concurrency"`
	Ops         int64    `json:"ops"`
	DurationS   float64  `json:"duration_s"`
	WritesPerS  float64  `json:"writes_per_s"`
	P50         float64  `json:"p50_us"`
	P99         float64  `json:"p99_us"`
	P999        float64  `json:"p999_us"`
	Errors      int64    `json:"errors"`
	ReadOps     *int64   `json:"read_ops,omitempty"`
	ReadsPerS   *float64 `json:"reads_per_s,omitempty"`
	ReadP50     *float64 `json:"read_p50_us,omitempty"`
	ReadP99     *float64 `json:"read_p99_us,omitempty"`
	ReadP999    *float64 `json:"read_p999_us,omitempty"`
	ReadErrors  *int64   `json:"read_errors,omitempty"`
}

// Bench runs the write phase and, with --reads, the read phase, then prints
// the single JSON result line on stdout.
func Bench(ctx context.Context, c *Config, system string, write, read Op) error {
	w, err := Run(ctx, c, "writes", write, true)
	if err != nil {
		return err
	}
	r := result{
		System: system, Concurrency: c.Concurrency, Ops: w.Ops, DurationS: c.DurationS,
		WritesPerS: round1(w.PerS), P50: w.P50, P99: w.P99, P999: w.P999, Errors: w.Errors,
	}
	if c.Reads {
		s, err := Run(ctx, c, "reads", read, false)
		if err != nil {
			return err
		}
		perS := round1(s.PerS)
		r.ReadOps, r.ReadsPerS, r.ReadErrors = &s.Ops, &perS, &s.Errors
		r.ReadP50, r.ReadP99, r.ReadP999 = &s.P50, &s.P99, &s.P999
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}
