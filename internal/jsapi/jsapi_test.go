package jsapi

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRetryAgainAfterAnAttemptTimedOut(t *testing.T) {
	calls := 0
	err := Retry(context.Background(), 20*time.Millisecond, func(ctx context.Context) error {
		calls++
		if calls < 3 {
			<-ctx.Done() // a reply that never comes
			return ctx.Err()
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 3, calls)
}

func TestRetryStopsOnOtherErrorsAndWhenCtxEnds(t *testing.T) {
	boom := errors.New("boom")
	calls := 0
	err := Retry(context.Background(), time.Second, func(context.Context) error { calls++; return boom })
	require.ErrorIs(t, err, boom)
	require.Equal(t, 1, calls)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	calls = 0
	err = Retry(ctx, 30*time.Millisecond, func(ctx context.Context) error {
		calls++
		<-ctx.Done()
		return ctx.Err()
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.GreaterOrEqual(t, calls, 2)
	require.Less(t, calls, 10)
}

func TestRetryGivesUpAfterMaxAttempts(t *testing.T) {
	calls := 0
	err := Retry(context.Background(), 10*time.Millisecond, func(ctx context.Context) error {
		calls++
		<-ctx.Done() // never answered (a missing permission looks the same)
		return ctx.Err()
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, MaxAttempts, calls)
}
