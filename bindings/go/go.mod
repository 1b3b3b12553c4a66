module github.com/kvr-db/kvr/bindings/go

go 1.21
