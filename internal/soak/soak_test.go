package soak_test

import (
	"context"
	"flag"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/soak"
)

var soakFor = flag.Duration("soak", 0, "run TestSoak's workload for this long (see make soak)")

// TestSoak is the soak run (make soak): the mixed workload of soak.Soak on
// a 3-node cluster for -soak, with faults, then the checker. It prints the
// summary and fails on any violation.
func TestSoak(t *testing.T) {
	if *soakFor <= 0 {
		t.Skip("the soak run takes minutes: make soak [SOAK=5m], or go test -race -run TestSoak -count=1 -timeout 30m -v ./internal/soak/ -args -soak=5m")
	}
	c := embedded.RunCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), *soakFor+20*time.Minute)
	defer cancel()
	sum, err := soak.Soak(ctx, c, soak.SoakConfig{Duration: *soakFor, Logf: t.Logf})
	if sum != nil {
		t.Log("\n" + sum.String())
	}
	require.NoError(t, err)
	require.NoError(t, sum.Err())
}
