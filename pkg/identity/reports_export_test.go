package identity

// ReportsOf returns the reports this replica of c holds now.
func ReportsOf(c *CA) ReportSnapshot { return c.reports.Snapshot() }
