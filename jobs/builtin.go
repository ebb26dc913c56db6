package jobs

// Builtin returns the built-in job types: steps, primes and report.
// Adding a type: write one file with a Spec and a Define call, then add it
// here (or register it on the Registry in your own main).
func Builtin() []Type {
	return []Type{Steps(), Primes(), Report()}
}
