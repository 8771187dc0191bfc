package consumers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
)

// parseDelivery reads what nats.go's Metadata reads, from real deliveries
// of a durable pull consumer (redeliveries included) and from both forms of
// the reply subject, and refuses what is not a delivery's reply.
func TestParseDelivery(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "acks", Subjects: []string{"acks.>"}})
	require.NoError(t, err)
	for i := range 25 {
		_, err := js.Publish(ctx, fmt.Sprintf("acks.%d", i%3), []byte("x"))
		require.NoError(t, err)
	}
	cons, err := js.CreateConsumer(ctx, "acks", jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "acks.1", AckWait: 100 * time.Millisecond})
	require.NoError(t, err)
	seen := 0
	for round := range 2 { // the second round: redeliveries after AckWait
		batch, err := cons.Fetch(8, jetstream.FetchMaxWait(2*time.Second))
		require.NoError(t, err)
		for m := range batch.Messages() {
			md, err := m.Metadata()
			require.NoError(t, err)
			d, ok := parseDelivery(m.Reply())
			require.True(t, ok, m.Reply())
			assert.Equal(t, delivery{stream: md.Sequence.Stream, consumer: md.Sequence.Consumer, pending: md.NumPending}, d, m.Reply())
			seen++
			if round == 1 {
				require.NoError(t, m.Ack())
			}
		}
		require.NoError(t, batch.Error())
		if round == 0 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	assert.Equal(t, 16, seen) // 8 messages on acks.1, each delivered twice

	for _, c := range []struct {
		reply string
		want  delivery
		ok    bool
	}{
		{"$JS.ACK.S.C.1.7.3.1700000000000000000.12", delivery{7, 3, 12}, true},
		{"$JS.ACK._.ab12.S.C.2.9.4.1700000000000000000.0.xYz", delivery{9, 4, 0}, true},
		{"$JS.ACK.hub.ab12.S.C.2.9.4.1700000000000000000.5", delivery{9, 4, 5}, true},
		{"$JS.ACK.hub.ab12.S.C.2.9.4.1700000000000000000.5.tok.more", delivery{9, 4, 5}, true},
		{"", delivery{}, false},
		{"_INBOX.abc", delivery{}, false},
		{"$JS.ACK.S.C.1.7.3.17", delivery{}, false},                       // 6 tokens
		{"$JS.ACK.x.S.C.1.7.3.1700000000000000000.12", delivery{}, false}, // 8 tokens
		{"$JS.ACK.S.C.1.7x.3.1700000000000000000.12", delivery{}, false},
		{"$JS.ACK.S.C.1..3.1700000000000000000.12", delivery{}, false},
		{"$JS.ACK.S.C.1.7.3.1700000000000000000.99999999999999999999", delivery{}, false}, // 20 digits
		{"$JS.NAK.S.C.1.7.3.1700000000000000000.12", delivery{}, false},
	} {
		d, ok := parseDelivery(c.reply)
		assert.Equal(t, c.ok, ok, c.reply)
		assert.Equal(t, c.want, d, c.reply)
	}
}

func BenchmarkParseDelivery(b *testing.B) {
	const reply = "$JS.ACK._.ab12cd.shop.projection-carts.1.1234567.1234567.1763900000123456789.98765"
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := parseDelivery(reply); !ok {
			b.Fatal("not parsed")
		}
	}
}
