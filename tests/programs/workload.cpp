// tests/programs/workload.cpp — a deterministic C++ program for run_programs.sh: g++ compiles it
// (cc1plus allocates heavily on templates) with and without the sheafalloc preload, the objects
// must match, and the program's output (operator new/delete -> malloc/free) too.
//
// usage: workload_cpp [N]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Rng {
	uint64_t s = 88172645463325252ull;
	uint64_t operator()()
	{
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		return s;
	}
};

uint64_t mix(uint64_t h, uint64_t v) { return (h ^ (v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2))) * 0xff51afd7ed558ccdull; }

template <typename T> uint64_t hash_range(const T &c)
{
	uint64_t h = c.size();
	for (const auto &x : c)
		h = mix(h, std::hash<typename T::value_type>{}(x));
	return h;
}

struct Shape {
	virtual ~Shape() = default;
	virtual double area() const = 0;
	virtual std::string name() const = 0;
};
struct Rect : Shape {
	double w, h;
	Rect(double a, double b) : w(a), h(b) {}
	double area() const override { return w * h; }
	std::string name() const override { return "rect" + std::to_string(static_cast<int>(w)); }
};
struct Tri : Shape {
	double b, h;
	Tri(double x, double y) : b(x), h(y) {}
	double area() const override { return b * h / 2; }
	std::string name() const override { return "tri" + std::to_string(static_cast<int>(h)); }
};

} // namespace

int main(int argc, char **argv)
{
	long n = argc > 1 ? std::atol(argv[1]) : 100000;
	Rng rng;
	uint64_t total = 0;

	std::map<std::string, std::vector<int>> m;
	std::unordered_map<uint64_t, std::string> um;
	for (long i = 0; i < n; i++) {
		std::string k = "k" + std::to_string(rng() % 5000);
		m[k].push_back(static_cast<int>(i));
		um[rng() % 20000] += static_cast<char>('a' + i % 26);
		if (i % 3 == 0)
			um.erase(rng() % 20000);
	}
	uint64_t h = 0;
	for (const auto &kv : m)
		h = mix(mix(h, std::hash<std::string>{}(kv.first)), hash_range(kv.second));
	std::vector<std::pair<uint64_t, std::string>> sorted(um.begin(), um.end());
	std::sort(sorted.begin(), sorted.end());
	for (const auto &kv : sorted)
		h = mix(mix(h, kv.first), std::hash<std::string>{}(kv.second));
	std::printf("maps: %zu %zu %016llx\n", m.size(), um.size(), static_cast<unsigned long long>(h));
	total = mix(total, h);

	std::vector<std::unique_ptr<Shape>> shapes;
	for (long i = 0; i < n; i++) {
		if (rng() % 2)
			shapes.push_back(std::make_unique<Rect>(rng() % 100, rng() % 100));
		else
			shapes.push_back(std::make_unique<Tri>(rng() % 100, rng() % 100));
		if (i % 4 == 3)
			shapes.erase(shapes.begin() + static_cast<long>(rng() % shapes.size()));
	}
	std::stable_sort(shapes.begin(), shapes.end(),
			 [](const auto &a, const auto &b) { return a->area() < b->area(); });
	std::ostringstream os;
	double sum = 0;
	for (size_t i = 0; i < shapes.size(); i++) {
		sum += shapes[i]->area();
		if (i % 100 == 0)
			os << shapes[i]->name() << ':' << shapes[i]->area() << ';';
	}
	h = std::hash<std::string>{}(os.str());
	std::printf("shapes: %zu %.1f %016llx\n", shapes.size(), sum, static_cast<unsigned long long>(h));
	total = mix(total, h);

	std::list<std::string> lst;
	std::set<std::string> st;
	for (long i = 0; i < n; i++) {
		std::string s(1 + rng() % 64, static_cast<char>('A' + i % 26));
		lst.push_back(s);
		st.insert(s + std::to_string(i % 1000));
		if (lst.size() > 1000)
			lst.pop_front();
	}
	h = mix(hash_range(lst), hash_range(st));
	std::printf("list/set: %zu %zu %016llx\n", lst.size(), st.size(), static_cast<unsigned long long>(h));
	total = mix(total, h);

	std::regex re("([a-z]+)-([0-9]+)");
	std::string text;
	for (long i = 0; i < n / 10; i++)
		text += (i % 3 ? "word" : "xy") + std::string("-") + std::to_string(i * 7) + " ";
	size_t matches = 0;
	uint64_t rh = 0;
	for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it) {
		matches++;
		rh = mix(rh, std::hash<std::string>{}((*it)[1].str() + (*it)[2].str()));
	}
	std::printf("regex: %zu %016llx\n", matches, static_cast<unsigned long long>(rh));
	total = mix(total, rh);

	std::printf("total: %016llx\n", static_cast<unsigned long long>(total));
	return 0;
}
