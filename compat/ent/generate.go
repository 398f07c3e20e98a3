package ent

// The generated code in this directory is committed. To regenerate it after
// editing ./schema, run from the compat directory:
//
//	go run -mod=mod entgo.io/ent/cmd/ent generate ./ent/schema
//	go mod tidy
//
//go:generate go run -mod=mod entgo.io/ent/cmd/ent generate ./schema
