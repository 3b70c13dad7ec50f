package wire

// Names of resources both ends use.
const (
	// InboundListenerName is the name of the one inbound Listener a
	// node gets: "inbound|15006".
	InboundListenerName = "inbound|15006"
	// LocalClusterPrefix starts the name of the cluster an inbound filter
	// chain proxies to: "local|<target port>", the workload's app.
	LocalClusterPrefix = "local|"
)

// ClusterName is the name of the Cluster and ClusterLoadAssignment of key.
func ClusterName(key ServiceKey) string { return key.String() }
