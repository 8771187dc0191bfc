package stream_test

import (
	"errors"
	"fmt"
	"strings"

	"github.com/esnats/esnats/stream"
)

// regExampleItemAdded is an event payload. Its json tags name the fields in both the
// msgpack and the JSON codec.
type regExampleItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

func ExampleRegister() {
	reg := stream.NewRegistry() // msgpack by default
	stream.MustRegister[regExampleItemAdded](reg, "item-added")

	name, schema, data, err := reg.Encode(regExampleItemAdded{SKU: "apple", Quantity: 3})
	if err != nil {
		panic(err)
	}
	fmt.Println(name, schema, reg.Codec().ContentType())

	// What a reader does with a stored event: the name, schema version and
	// content type come from its headers.
	v, err := reg.Decode(name, schema, reg.Codec().ContentType(), data)
	if err != nil {
		panic(err)
	}
	item := v.(regExampleItemAdded) // a value of the registered type
	fmt.Printf("%+v\n", item)

	_, err = reg.Decode("item-removed", 1, "", data)
	fmt.Println(errors.Is(err, stream.ErrUnknownEventType))
	// Output:
	// item-added 1 application/msgpack
	// {SKU:apple Quantity:3}
	// true
}

// regExampleRenamedV1 was version 1 of the event: one name field.
type regExampleRenamedV1 struct {
	Name string `json:"name"`
}

// regExampleRenamed is version 2: the name split in two.
type regExampleRenamed struct {
	First string `json:"first"`
	Last  string `json:"last"`
}

func ExampleUpcast() {
	reg := stream.NewRegistry()
	stream.MustRegister[regExampleRenamed](reg, "customer-renamed",
		stream.SchemaVersion(2),
		stream.Upcast(1, func(old regExampleRenamedV1) (regExampleRenamed, error) {
			first, last, _ := strings.Cut(old.Name, " ")
			return regExampleRenamed{First: first, Last: last}, nil
		}),
	)

	// An event stored by the old code, with schema version 1.
	old, _ := stream.Msgpack().Marshal(regExampleRenamedV1{Name: "Ada Lovelace"})

	v, err := reg.Decode("customer-renamed", 1, "application/msgpack", old)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%+v\n", v.(regExampleRenamed))

	// An event written by newer code cannot be read.
	_, err = reg.Decode("customer-renamed", 3, "application/msgpack", old)
	fmt.Println(errors.Is(err, stream.ErrSchemaVersion))
	// Output:
	// {First:Ada Last:Lovelace}
	// true
}

func ExampleEncodeID() {
	for _, id := range []string{"order-42", "ada@example.com", "a.b c", "Zürich"} {
		token, _ := stream.EncodeID(id)
		back, _ := stream.DecodeID(token)
		fmt.Printf("%-16s %-22s %s\n", id, token, back)
	}

	_, err := stream.EncodeID("")
	fmt.Println(errors.Is(err, stream.ErrInvalidID), err)
	// Output:
	// order-42         order-42               order-42
	// ada@example.com  ada=40example=2Ecom    ada@example.com
	// a.b c            a=2Eb=20c              a.b c
	// Zürich           Z=C3=BCrich            Zürich
	// true esnats: invalid aggregate id: id is empty
}

func ExampleValidateName() {
	fmt.Println(stream.ValidateName("event type", "item-added"))
	fmt.Println(stream.ValidateName("event type", "item.added"))
	// Output:
	// <nil>
	// esnats: invalid name: event type "item.added" holds '.' at offset 4; only ASCII letters, digits, '-' and '_' are allowed
}
