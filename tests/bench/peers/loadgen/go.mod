module kvrbench/loadgen

go 1.22
