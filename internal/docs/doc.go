// Package docs holds the tests that keep the repository's documentation
// true to the code and self-contained: docs/architecture.md's port table
// against the defaults in the code, and no file referring to a design
// document outside the repository.
package docs
