package replica

import (
	"reflect"
	"unsafe"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/benbjohnson/litestream"
	lss3 "github.com/benbjohnson/litestream/s3"
)

// closeIdle closes the idle connections of client's HTTP transport once a
// Compact or RestoreReplica is done with it. Litestream v0.5.18's S3 client
// builds a transport of its own on Init (s3.ReplicaClient.Init) and offers
// no Close: its kept-alive connections to the store, two goroutines each,
// stayed for the transport's IdleConnTimeout (90 s) after every call, so a
// service that compacts and restores as tenants churn held a number of
// sockets and goroutines that grew with the churn (a soak: 90 → 538
// descriptors and 139 → 1 049 goroutines in two minutes with eight tenants
// open). The client's S3 client is unexported: read through reflect, of
// the one type this version has, and left alone otherwise.
func closeIdle(client litestream.ReplicaClient) {
	c, ok := client.(*lss3.ReplicaClient)
	if !ok || c == nil {
		return
	}
	f := reflect.ValueOf(c).Elem().FieldByName("s3")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*s3.Client]() || f.IsNil() {
		return
	}
	sc := (*s3.Client)(unsafe.Pointer(f.Pointer()))
	if hc, ok := sc.Options().HTTPClient.(interface{ CloseIdleConnections() }); ok {
		hc.CloseIdleConnections() // an *http.Client, as Init made it
	}
}
