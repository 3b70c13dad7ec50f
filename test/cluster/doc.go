// Package cluster holds the real-node end-to-end test: Tether installed
// from manifests/ on the single-node cluster of hack/cluster (make
// cluster-up), and the whole user story run against it as a user would,
// through kubectl and the node's own tools only. The sample app it deploys
// is ./sampleapp (image tether-sample:latest); its manifests are in
// testdata/. It runs only when asked:
//
//	make image && make cluster-up
//	TETHER_CLUSTER_TEST=1 go test -timeout 50m -v ./test/cluster
package cluster
