module github.com/kvr-db/kvr/examples/go

go 1.21

require github.com/kvr-db/kvr/bindings/go v0.0.0

replace github.com/kvr-db/kvr/bindings/go => ../../bindings/go
