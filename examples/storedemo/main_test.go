package main

import (
	"context"
	"testing"
)

// The demo runs end to end on an embedded server (it fails on any
// unexpected outcome, such as a missing conflict).
func TestDemo(t *testing.T) {
	t.Setenv("NATS_URL", "")
	if err := run(context.Background()); err != nil {
		t.Fatal(err)
	}
}
