package kvr_test

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	kvr "github.com/kvr-db/kvr/bindings/go"
)

// A single-node replica: without Peers, a replica is a cluster of one and elects itself.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "kvr-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	r, err := kvr.Open(kvr.Options{Dir: filepath.Join(dir, "data")})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	if err := r.Put([]byte("greeting"), []byte("hello")); err != nil {
		log.Fatal(err)
	}
	v, err := r.Get([]byte("greeting"))
	fmt.Printf("%s %v\n", v, err)

	_, err = r.Get([]byte("missing"))
	fmt.Println(errors.Is(err, kvr.ErrNotFound))

	s, _ := r.Status()
	fmt.Println(s.Role)
	// Output:
	// hello <nil>
	// true
	// leader
}
