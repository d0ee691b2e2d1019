"""The natural-wonders dataset, written for this project: name, country, continent, kind, one
measured fact, and a few sentences. Figures are rounded, commonly cited values (heights and
depths in metres, lengths in kilometres); a wonder shared by several countries is listed under
one of them.

Each record: (name, country, continent, kind, fact, sentences).
"""
from __future__ import annotations

WONDERS: tuple[tuple[str, str, str, str, str, str], ...] = (
    # ---- waterfalls ----
    ("Victoria Falls", "Zambia", "Africa", "waterfall", "It drops 108 m into a narrow gorge.",
     "A wide river spreads over a basalt edge and falls into a deep chasm. Its spray rises like smoke, so "
     "people call it the smoke that thunders."),
    ("Niagara Falls", "Canada", "North America", "waterfall", "Its Horseshoe Falls are about 51 m high.",
     "Three falls carry the river between two of the Great Lakes. Tour boats sail into the mist at the foot of "
     "the curved main fall."),
    ("Angel Falls", "Venezuela", "South America", "waterfall", "Its unbroken drop is 979 m.",
     "It is the highest uninterrupted waterfall on Earth. The water leaps from the rim of a flat-topped mountain "
     "and turns to mist before it reaches the jungle."),
    ("Iguazu Falls", "Argentina", "South America", "waterfall", "Its edge is about 2.7 km wide.",
     "Hundreds of separate cascades line a horseshoe of cliffs. The loudest part is a narrow chasm known as the "
     "Devil's Throat."),
    ("Kaieteur Falls", "Guyana", "South America", "waterfall", "Its single drop is 226 m.",
     "A broad river pours over a sandstone cliff deep in untouched rainforest. Tiny golden frogs live in giant "
     "plants near the brink."),
    ("Gullfoss", "Iceland", "Europe", "waterfall", "It falls 32 m in two steps.",
     "A glacial river tumbles down two wide stairs into a deep crack in the land. On sunny days a rainbow hangs "
     "over the gorge."),
    ("Yosemite Falls", "United States", "North America", "waterfall", "It drops 739 m in three sections.",
     "Snowmelt feeds it from the granite walls of a famous valley. By late summer the flow can shrink to a "
     "trickle."),
    ("Sutherland Falls", "New Zealand", "Oceania", "waterfall", "It falls 580 m in three leaps.",
     "Water from a small alpine lake drops through a wet mountain forest. Hikers on a long track take a side path "
     "to reach its foot."),
    ("Tugela Falls", "South Africa", "Africa", "waterfall", "Its five drops total about 948 m.",
     "The river leaves a high plateau in a chain of steep falls. In a cold winter the top of the falls can "
     "freeze."),
    ("Dettifoss", "Iceland", "Europe", "waterfall", "It is 44 m high and about 100 m wide.",
     "Grey meltwater from a great ice cap thunders over its edge. It is one of the most powerful waterfalls on "
     "the continent."),
    ("Kaaterskill Falls", "United States", "North America", "waterfall", "Its two tiers fall about 80 m.",
     "It drops through a wooded cleft in a mountain range. Painters of a famous landscape school made it one of "
     "their favourite subjects."),
    ("Jog Falls", "India", "Asia", "waterfall", "It plunges about 253 m.",
     "A river splits into four streams that fall side by side down a sheer cliff. It is fullest during the "
     "monsoon rains."),
    # ---- mountains ----
    ("Mount Everest", "Nepal", "Asia", "mountain", "Its summit is 8,849 m above sea level.",
     "It is the highest mountain above sea level. Climbers face thin air, fierce winds and a dangerous icefall "
     "on the way to the top."),
    ("K2", "Pakistan", "Asia", "mountain", "It rises to 8,611 m.",
     "It is the second highest mountain on Earth. Its steep rock and sudden storms make it far harder to climb "
     "than its taller neighbour."),
    ("Kilimanjaro", "Tanzania", "Africa", "mountain", "Its highest point is 5,895 m.",
     "This free-standing massif is the highest peak on its continent. Walkers pass farmland, rainforest, heath "
     "and stony desert before reaching the icy summit."),
    ("Matterhorn", "Switzerland", "Europe", "mountain", "It is 4,478 m high.",
     "Its sharp pyramid of rock towers over a village with no cars. The first climbers reached the top in "
     "1865."),
    ("Denali", "United States", "North America", "mountain", "It is 6,190 m high.",
     "It is the highest peak on its continent and rises straight from low tundra. Snow covers its upper slopes "
     "all year."),
    ("Aconcagua", "Argentina", "South America", "mountain", "It is 6,961 m high.",
     "It is the highest mountain outside Asia. Strong cold winds often sweep across its upper slopes."),
    ("Table Mountain", "South Africa", "Africa", "mountain", "Its flat top is 1,085 m high.",
     "The long level summit looks over a city and the ocean. A layer of cloud often spills over its edge like a "
     "tablecloth."),
    ("Mont Blanc", "France", "Europe", "mountain", "It is about 4,806 m high.",
     "It is the highest peak of the Alps. Its exact height changes a little as the ice on its summit grows and "
     "shrinks."),
    ("Aoraki", "New Zealand", "Oceania", "mountain", "It is 3,724 m high.",
     "It is the highest peak of its country and is also called Mount Cook. Glaciers flow from its flanks into "
     "wide braided rivers."),
    ("Mount Kinabalu", "Malaysia", "Asia", "mountain", "It is 4,095 m high.",
     "It rises on a large tropical island above forests full of orchids. Pitcher plants that trap insects grow "
     "on its slopes."),
    ("Mount Elbrus", "Russia", "Europe", "mountain", "Its western summit is 5,642 m high.",
     "This dormant volcano has two snowy summits. It is usually counted as the highest peak on its continent."),
    ("Huascaran", "Peru", "South America", "mountain", "Its south summit is 6,768 m high.",
     "It is the highest peak of a long tropical range. Dozens of glaciers cling to its sides."),
    # ---- volcanoes ----
    ("Mount Vesuvius", "Italy", "Europe", "volcano", "It is 1,281 m high.",
     "Its eruption in the year 79 buried two Roman towns under ash. Today millions of people live within sight "
     "of its crater."),
    ("Mount Etna", "Italy", "Europe", "volcano", "It stands about 3,300 m high.",
     "Lava flows from its summit craters and side vents many times each decade. Vineyards and orchards grow on "
     "its rich dark soil."),
    ("Mount Fuji", "Japan", "Asia", "volcano", "It is 3,776 m high.",
     "Its snow-capped cone is the tallest peak in its country. It last erupted in 1707, and crowds climb it "
     "every summer."),
    ("Paricutin", "Mexico", "North America", "volcano", "It rose 424 m above the field where it began.",
     "It opened in a farmer's cornfield in 1943 and grew for nine years. Its lava buried a village, leaving only "
     "a church tower above the rock."),
    ("Mount St. Helens", "United States", "North America", "volcano", "It is 2,549 m high since 1980.",
     "A huge eruption in 1980 blew away its north side. The blast flattened forests across a wide area."),
    ("Cotopaxi", "Ecuador", "South America", "volcano", "It is 5,897 m high.",
     "Its almost perfect cone carries a glacier close to the equator. It is one of the highest active "
     "volcanoes in the world."),
    ("Krakatoa", "Indonesia", "Asia", "volcano", "The sound of its 1883 eruption carried about 4,800 km.",
     "The great eruption destroyed most of the island and raised deadly waves. A new island called the child of "
     "the volcano has since grown in its place."),
    ("Eyjafjallajokull", "Iceland", "Europe", "volcano", "It is 1,651 m high.",
     "An ice cap covers this volcano. Its ash cloud in 2010 stopped flights across much of the continent."),
    ("Mount Bromo", "Indonesia", "Asia", "volcano", "It is 2,329 m high.",
     "It smokes in the middle of a vast plain of volcanic sand. Visitors climb a long stairway to look into "
     "its crater at dawn."),
    ("Villarrica", "Chile", "South America", "volcano", "It is 2,847 m high.",
     "Its snowy cone often holds a lake of glowing lava in its crater. A lake and a holiday town lie at its "
     "foot."),
    ("Mount Nyiragongo", "Congo", "Africa", "volcano", "It is about 3,470 m high.",
     "Its crater has held one of the largest lava lakes on Earth. Its fast lava flows have reached a nearby "
     "city."),
    # ---- canyons ----
    ("Grand Canyon", "United States", "North America", "canyon", "It is 446 km long.",
     "A river has cut through rock layers nearly two billion years old. In places the canyon is more than a "
     "kilometre and a half deep."),
    ("Fish River Canyon", "Namibia", "Africa", "canyon", "It is about 160 km long.",
     "It is the largest canyon on its continent. Hot springs bubble up near its southern end."),
    ("Colca Canyon", "Peru", "South America", "canyon", "It is about 3,270 m deep.",
     "Condors ride the morning air above its walls. Terraced fields built centuries ago still line its "
     "slopes."),
    ("Verdon Gorge", "France", "Europe", "canyon", "It is up to 700 m deep.",
     "A river has carved this limestone gorge, and its water is a striking green. Climbers come from far away "
     "to scale its walls."),
    ("Tiger Leaping Gorge", "China", "Asia", "canyon", "It is about 3,790 m deep from peak to river.",
     "A story says a tiger escaped a hunter by leaping across the river at its narrowest point. A high trail "
     "follows the gorge."),
    ("Blyde River Canyon", "South Africa", "Africa", "canyon", "It is about 26 km long.",
     "It is one of the largest green canyons on Earth. Round rock towers topped with grass rise from its rim."),
    ("Kings Canyon", "Australia", "Oceania", "canyon", "Its walls rise about 100 m.",
     "Red sandstone cliffs enclose a shady pool and palm trees. A rim walk circles the canyon above the "
     "desert."),
    # ---- lakes ----
    ("Lake Baikal", "Russia", "Asia", "lake", "It is 1,642 m deep.",
     "It is the deepest and one of the oldest lakes on Earth. A freshwater seal lives here and nowhere else."),
    ("Lake Titicaca", "Peru", "South America", "lake", "Its surface lies 3,812 m above sea level.",
     "It is often called the highest navigable lake. Some families live on floating islands woven from reeds."),
    ("Crater Lake", "United States", "North America", "lake", "It is 594 m deep.",
     "It fills the bowl left when an ancient volcano collapsed. With no river flowing in, its water is clear "
     "and deep blue."),
    ("Plitvice Lakes", "Croatia", "Europe", "lake", "Its 16 lakes step down about 135 m.",
     "Terraced lakes are joined by many small waterfalls. Wooden walkways lead visitors over the water."),
    ("Moraine Lake", "Canada", "North America", "lake", "It lies about 1,884 m above sea level.",
     "Fine rock dust from glaciers turns its water a vivid blue. A row of ten peaks rises behind it."),
    ("Lake Hillier", "Australia", "Oceania", "lake", "It is about 600 m long.",
     "This lake on an island is bright pink. A narrow strip of forest and sand separates it from the sea."),
    ("Lake Malawi", "Malawi", "Africa", "lake", "It is about 580 km long.",
     "It holds more kinds of fish than any other lake. Most of them are small and brightly coloured."),
    ("Lake Bled", "Slovenia", "Europe", "lake", "It is about 2.1 km long.",
     "A tiny island with a church sits in the middle of the lake. A castle watches from a cliff above the "
     "shore."),
    ("Dead Sea", "Jordan", "Asia", "lake", "Its shore lies about 430 m below sea level.",
     "Its water is so salty that swimmers float without effort. Its shore is the lowest dry land on Earth."),
    ("Lake Natron", "Tanzania", "Africa", "lake", "Its water can reach about 60 degrees Celsius.",
     "Salt and soda make the shallow water red and caustic. Huge flocks of flamingos breed on its mud flats."),
    ("Lake Louise", "Canada", "North America", "lake", "It lies about 1,750 m above sea level.",
     "A glacier hangs above the far end of this green lake. In winter people skate on its frozen surface."),
    # ---- rivers ----
    ("Amazon River", "Brazil", "South America", "river", "It is about 6,400 km long.",
     "It carries more water than any other river. Its basin holds the largest rainforest on Earth."),
    ("Nile", "Egypt", "Africa", "river", "It is about 6,650 km long.",
     "It flows north through the desert to the sea. Ancient cities grew up along its narrow green banks."),
    ("Yangtze River", "China", "Asia", "river", "It is about 6,300 km long.",
     "It is the longest river on its continent. A giant dam now spans its famous gorges."),
    ("Mississippi River", "United States", "North America", "river", "It is about 3,730 km long.",
     "It drains a huge plain between two mountain ranges. Paddle steamers once carried cotton along it."),
    ("Ganges", "India", "Asia", "river", "It is about 2,525 km long.",
     "It starts at an ice cave high in the mountains. Millions of people bathe in it as a sacred act."),
    ("Murray River", "Australia", "Oceania", "river", "It is about 2,508 km long.",
     "It is the longest river of its country. Red gum forests line its slow brown water."),
    ("Volga", "Russia", "Europe", "river", "It is about 3,530 km long.",
     "It is the longest river on its continent and ends in a wide delta. Many large cities stand on its banks."),
    # ---- deserts ----
    ("Sahara", "Algeria", "Africa", "desert", "It covers about 9 million square kilometres.",
     "It is the largest hot desert on Earth. Only a small part of it is sand dunes; most is stony plain."),
    ("Atacama Desert", "Chile", "South America", "desert", "Parts of it get less than 1 mm of rain a year.",
     "It is one of the driest places on Earth. Its clear dark skies draw astronomers from around the world."),
    ("Namib Desert", "Namibia", "Africa", "desert", "Some of its dunes rise over 300 m.",
     "Its red dunes run down to a cold ocean shore. Beetles drink the fog that rolls in from the sea."),
    ("Gobi Desert", "Mongolia", "Asia", "desert", "It covers about 1.3 million square kilometres.",
     "It is a cold desert of bare rock and gravel more than sand. Dinosaur eggs were first found in its "
     "cliffs."),
    ("Wadi Rum", "Jordan", "Asia", "desert", "Its protected area covers about 720 square kilometres.",
     "Sandstone mountains rise from a valley of red sand. Ancient carvings mark many of its rocks."),
    ("Death Valley", "United States", "North America", "desert", "Its lowest point is 86 m below sea level.",
     "It once recorded one of the highest air temperatures on Earth. Stones slide across a dry lake bed on thin "
     "ice."),
    ("Simpson Desert", "Australia", "Oceania", "desert", "It covers about 176,000 square kilometres.",
     "Long parallel red dunes cross it for hundreds of kilometres. Few roads cross its empty centre."),
    # ---- caves ----
    ("Son Doong Cave", "Vietnam", "Asia", "cave", "Its main passage is over 5 km long.",
     "It is the largest known cave passage on Earth. A jungle grows inside where parts of the roof fell in."),
    ("Mammoth Cave", "United States", "North America", "cave", "More than 680 km of its passages are mapped.",
     "It is the longest known cave system on Earth. Guides have led visitors through it for two centuries."),
    ("Eisriesenwelt", "Austria", "Europe", "cave", "It is about 42 km long.",
     "It is the largest ice cave on Earth. Only the first kilometre is covered in ice, lit by lamps for "
     "visitors."),
    ("Reed Flute Cave", "China", "Asia", "cave", "Its visitor path is about 240 m long.",
     "Coloured lights show off its stalactites and stone pillars. Its name comes from the reeds that grow at "
     "its mouth."),
    ("Postojna Cave", "Slovenia", "Europe", "cave", "It has about 24 km of passages.",
     "A small train carries visitors deep inside. A pale blind salamander lives in its dark pools."),
    ("Jeita Grotto", "Lebanon", "Asia", "cave", "Its caves run about 9 km.",
     "Visitors cross its lower cave by boat on an underground river. The upper cave is full of stalactites."),
    ("Carlsbad Caverns", "United States", "North America", "cave", "Its Big Room is about 1.2 km long.",
     "Huge chambers of stone lie under a desert range. At dusk thousands of bats fly out of its entrance."),
    ("Fingal's Cave", "United Kingdom", "Europe", "cave", "It is about 70 m long.",
     "Its walls are made of tall six-sided basalt columns. The sound of the waves inside inspired a famous "
     "overture."),
    # ---- glaciers ----
    ("Perito Moreno Glacier", "Argentina", "South America", "glacier", "Its front is about 5 km wide.",
     "Huge blocks of ice break from its face and crash into a lake. Walkways let visitors watch from close by."),
    ("Aletsch Glacier", "Switzerland", "Europe", "glacier", "It is about 20 km long.",
     "It is the largest glacier of the Alps. Three ice streams meet in a wide flat plain of ice."),
    ("Franz Josef Glacier", "New Zealand", "Oceania", "glacier", "It is about 12 km long.",
     "It descends from high peaks almost down into a rainforest. Guided walks once went straight onto the ice."),
    ("Hubbard Glacier", "United States", "North America", "glacier", "It is about 122 km long.",
     "Its face meets the sea in a tall wall of ice. Cruise ships stop to watch it calve."),
    ("Vatnajokull", "Iceland", "Europe", "glacier", "It covers about 7,700 square kilometres.",
     "It is the largest ice cap on its continent. Volcanoes lie hidden under its ice."),
    # ---- reefs ----
    ("Great Barrier Reef", "Australia", "Oceania", "reef", "It stretches about 2,300 km.",
     "It is the largest coral reef system on Earth. Whales, turtles and thousands of kinds of fish live along it."),
    ("Belize Barrier Reef", "Belize", "North America", "reef", "It is about 300 km long.",
     "A deep round sinkhole called the Great Blue Hole lies within it. Divers come to see its sharks and rays."),
    ("Tubbataha Reef", "Philippines", "Asia", "reef", "Its park covers about 970 square kilometres.",
     "Two coral atolls lie far out in the open sea. Rangers guard it from a lonely station."),
    ("Ningaloo Reef", "Australia", "Oceania", "reef", "It is about 260 km long.",
     "It lies so close to the shore that swimmers can reach it from the beach. Whale sharks gather here each "
     "autumn."),
    # ---- geysers ----
    ("Old Faithful", "United States", "North America", "geyser", "It erupts up to about 56 m high.",
     "It erupts often and regularly enough for rangers to predict it. It stands in the oldest national park."),
    ("Strokkur", "Iceland", "Europe", "geyser", "It usually erupts 15 to 20 m high.",
     "It bursts every few minutes from a pool of blue water. A larger geyser nearby gave all geysers their "
     "name."),
    ("El Tatio", "Chile", "South America", "geyser", "It lies about 4,320 m above sea level.",
     "Dozens of geysers steam in the cold dawn air of a high plateau. It is one of the largest geyser fields on "
     "Earth."),
    ("Pohutu Geyser", "New Zealand", "Oceania", "geyser", "It erupts up to about 30 m high.",
     "It erupts many times a day in a valley of hot pools. The name means big splash."),
    # ---- fjords ----
    ("Geirangerfjord", "Norway", "Europe", "fjord", "It is about 15 km long.",
     "Steep walls rise from the water, and waterfalls pour down them. Old farms cling to ledges high above the "
     "fjord."),
    ("Milford Sound", "New Zealand", "Oceania", "fjord", "It is about 15 km long.",
     "Sheer cliffs and a pointed peak rise from dark water. It is one of the wettest places on its islands."),
    ("Sognefjord", "Norway", "Europe", "fjord", "It is about 205 km long.",
     "It is the longest and deepest fjord of its country. Its narrow arms reach far inland between mountains."),
    # ---- cliffs and rocks ----
    ("Cliffs of Moher", "Ireland", "Europe", "cliff", "They rise up to 214 m above the sea.",
     "The cliffs run for kilometres along a windy coast. Puffins nest on their ledges in summer."),
    ("White Cliffs of Dover", "United Kingdom", "Europe", "cliff", "They rise up to 110 m.",
     "Bright white chalk faces the sea across a busy strait. They were a welcome sight to sailors coming "
     "home."),
    ("Preikestolen", "Norway", "Europe", "cliff", "Its flat top stands 604 m above a fjord.",
     "A square platform of rock juts out over the water. Hikers climb for hours to sit at its edge."),
    ("Uluru", "Australia", "Oceania", "rock", "It rises 348 m above the plain.",
     "This huge red rock glows at sunrise and sunset. It is sacred to the people who have lived around it for "
     "thousands of years."),
    ("Giant's Causeway", "United Kingdom", "Europe", "rock", "It has about 40,000 basalt columns.",
     "Six-sided stone columns step down into the sea. A legend says a giant built it as a path."),
)

CONTINENTS = ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")
